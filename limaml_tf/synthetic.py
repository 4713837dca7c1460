"""Synthetic interactions with planted per-task structure: the embedded default data set.

Each task (user) u has a hidden taste vector z_u = c_{segment(u)} + r_u: the segment
centre c is observable through the `segment` meta feature, the residual r_u is not
observable by any feature, only through u's own past responses. Each item j has a
hidden vector v_j, seen through noisy numeric features and a few tags. The response is

    P(click | u, j) = sigmoid(b_j + strength * <z_u, v_j> + bias)

so a model that can adapt a per-task embedding on the task's own samples (LiMAML
with fine-tuning) must beat one that only sees the observable features (vanilla).

`item_types=K > 0` plants a second level (two task definitions, `FeatureSpec.task_keys`): each
item has one of K types (observable, `item_type`), and each (user, type) pair a hidden taste
w_{u,k} ~ N(0, 1), independent of z_u, so the user-level taste does not explain it:

    P(click | u, j) = sigmoid(b_j + strength * <z_u, v_j> + type_strength * w_{u,type(j)} + bias)

The spec then has task_keys {"user": "user_id", "user_x_type": "user_item_type"} (the key column
"user_item_type" = user + "|" + type). The first level's draws are unchanged (same seed, same z, v, items
and times; labels differ only through the added term).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from limaml_tf.api_export import limaml_export
from limaml_tf.spec import Feature, FeatureSpec

DAY = 86_400.0


def synthetic_spec(num_items: int = 300, latent_dim: int = 4, item_types: int = 0) -> FeatureSpec:
    types = (Feature("item_type", "categorical", vocabulary=tuple(f"k{k}" for k in range(item_types))),) \
        if item_types else ()
    return FeatureSpec(
        task_key="user_id",
        timestamp="timestamp",
        label="label",
        meta_features=(
            Feature("segment", "categorical", num_bins=32),
            Feature("activity", "numeric"),
        ),
        other_features=(
            Feature("item_id", "categorical", num_bins=2 * num_items),
            Feature("item_tags", "multi_valued", num_bins=64, max_len=3),
            *(Feature(f"item_f{k}", "numeric") for k in range(latent_dim)),
            Feature("hour", "numeric"),
            *types,
        ),
        task_keys={"user": "user_id", "user_x_type": "user_item_type"} if item_types else (),
    )


@limaml_export
def make_synthetic(num_tasks: int = 600, num_items: int = 300, latent_dim: int = 4,
                   mean_samples_per_task: float = 60.0, num_segments: int = 6,
                   residual_scale: float = 1.0, strength: float = 1.6, days: float = 60.0,
                   seed: int = 0, item_types: int = 0, type_strength: float = 1.0) -> tuple[pd.DataFrame, FeatureSpec]:
    """Returns (interactions DataFrame, FeatureSpec). Deterministic in `seed`. `item_types` > 0: the
    two-level structure of the module docstring."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 0.7, (num_segments, latent_dim))
    segment = rng.integers(0, num_segments, num_tasks)
    z = centres[segment] + rng.normal(0, residual_scale, (num_tasks, latent_dim))
    activity = rng.lognormal(0.0, 0.5, num_tasks)
    n = np.clip(rng.lognormal(np.log(mean_samples_per_task), 0.6, num_tasks).astype(int), 6, 400)

    v = rng.normal(0, 1, (num_items, latent_dim)) / np.sqrt(latent_dim)
    item_bias = rng.normal(0, 0.5, num_items)
    item_obs = v + rng.normal(0, 0.15, v.shape)
    # Tags: the item's two strongest latent directions, with their sign.
    top = np.argsort(-np.abs(v), axis=1)[:, :2]
    tag_ids = top * 2 + (np.take_along_axis(v, top, axis=1) > 0)
    item_tags = np.array(["|".join(f"t{t}" for t in row) for row in tag_ids], dtype=object)

    user = np.repeat(np.arange(num_tasks), n)
    item = rng.integers(0, num_items, len(user))
    t = rng.uniform(0, days * DAY, len(user))
    logit = item_bias[item] + strength * np.einsum("ij,ij->i", z[user], v[item]) * np.sqrt(latent_dim) - 0.2
    if item_types:  # drawn from their own stream: the first level is the same as without them
        level2 = np.random.default_rng([seed, 2])
        item_type = level2.integers(0, item_types, num_items)
        w = level2.normal(0, 1, (num_tasks, item_types))
        logit = logit + type_strength * w[user, item_type[item]]
    label = (rng.uniform(size=len(user)) < 1 / (1 + np.exp(-logit))).astype(np.int64)

    df = pd.DataFrame({
        "user_id": np.char.add("u", user.astype(str)),
        "timestamp": t,
        "label": label,
        "segment": np.char.add("s", segment[user].astype(str)),
        "activity": activity[user].astype(np.float32),
        "item_id": np.char.add("i", item.astype(str)),
        "item_tags": item_tags[item],
        **{f"item_f{k}": item_obs[item, k].astype(np.float32) for k in range(latent_dim)},
        "hour": ((t % DAY) / 3600.0).astype(np.float32),
    })
    if item_types:
        df["item_type"] = np.char.add("k", item_type[item].astype(str))
        df["user_item_type"] = df["user_id"] + "|" + df["item_type"]
    return df, synthetic_spec(num_items, latent_dim, item_types)
