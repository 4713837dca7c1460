"""The model factory of the experiments: `build(kind, spec, cfg, **options)`.

Kinds (same features, same global block everywhere; DESIGN.md §1):

* ``vanilla`` — MLP meta block + global block trained by plain gradient descent (`VanillaModel`);
* ``wd_id`` — wide & deep with a learned per-user ID embedding: `IDEmbeddingMetaBlock` in a
  `VanillaModel` (unknown users get the shared `base` row);
* ``maml`` — entire-network MAML (MeLU-style: every weight adapted per user);
* ``limaml`` — LiMAML, MLP meta block (demographics + history features);
* ``limaml_id`` — LiMAML with the ID-embedding meta block.

`options` are keyword overrides: ``dropout`` (every hidden layer of both blocks), ``learning_rate``
(β), ``meta_dim`` / ``meta_hidden`` / ``global_hidden`` (sizes), ``history=False`` (no model reads
the history features: the control where adaptation is the only way to use the support),
``item_aware=True`` (the MLP meta block also reads the candidate item's features, so an adapted meta
block can re-rank items, not only shift the user's bias), ``dot=True`` (the global block adds a factorized
user x item term, the meta embedding dotted with an item tower's vector: `DotMLPGlobalBlock`),
``definitions=("user", "user_x_genre")`` (LiMAML with one MLP meta block per task definition — the
user and the user x the movie's main genre; the data then carries both task keys,
docs/task_definitions.md), ``factor_dim=k`` (the global block is a `FactorizedGlobalBlock`: the MLP global block
plus <u, item factors>, u the last k of the meta embedding, which then has meta_dim + k entries — what
``inner_solver="ridge"`` solves per task in closed form; a `VanillaModel` with ``inner_solver="ridge"``
fine-tunes by that solve at evaluation, λ fixed at ``ridge_l2``),
``meta_block="transformer"`` (the meta block is a `TransformerMetaBlock` over the user's previous ratings —
the split then carries the sequence features, `Config.sequence_len` long — plus the MLP meta block's
features; ``seq_dim`` / ``seq_heads`` / ``seq_layers`` size it), ``warm_start=E`` (handled by the runner: the
first E epochs of the budget train the same blocks as a vanilla model); anything else goes to the model's
constructor (``inner_learning_rate``, ``inner_steps``, ``support_dropout``, ``first_order``, or an
option a newer `LiMAMLModel` adds), so a new variant needs no change to the runner: a `Variant`
names a kind and its options.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect

import keras

import tensorflow as tf

from limaml_tf.blocks import (FEATURES_PART, FactorizedGlobalBlock, FeatureEmbedding, IDEmbeddingMetaBlock,
                              MLPGlobalBlock, MLPMetaBlock, TransformerMetaBlock)
from limaml_tf.model import LiMAMLModel
from limaml_tf.movielens import mlp_meta_features
from limaml_tf.raw_data import SEQUENCE_KINDS
from limaml_tf.vanilla import VanillaModel

KINDS = ("vanilla", "wd_id", "maml", "limaml", "limaml_id")
BLOCK_OPTIONS = ("dropout", "meta_dim", "meta_hidden", "global_hidden", "learning_rate", "history", "item_aware",
                 "dot", "factor_dim", "definitions", "meta_block", "seq_dim", "seq_heads", "seq_layers")
META_BLOCKS = ("mlp", "transformer")
ITEM_FEATURES = ("movie_id", "genres", "release_year", "genre_affinity")  # what `item_aware` adds
ITEM_TOWER_FEATURES = ("movie_id", "genres", "release_year")  # what `dot`'s item tower reads
HISTORY_FEATURES = ("genre_affinity",)  # besides the meta features named hist_* (user x item history)


@keras.saving.register_keras_serializable("limaml_tf_experiments")
class DropoutMLPMetaBlock(MLPMetaBlock):
    """`MLPMetaBlock` with dropout after every hidden layer (Table 10's "dropout on every layer")."""

    def __init__(self, features, dropout: float = 0.0, **kwargs):
        super().__init__(features, **kwargs)
        self.dropout = float(dropout)
        self.drop = keras.layers.Dropout(self.dropout)

    def call(self, inputs, training=False):
        x = self.inputs_layer(inputs)
        for layer in self.hidden:
            x = self.drop(layer(x), training=training)
        return self.out(x)

    def get_config(self):
        return {**super().get_config(), "dropout": self.dropout}


@keras.saving.register_keras_serializable("limaml_tf_experiments")
class DotMLPGlobalBlock(MLPGlobalBlock):
    """`MLPGlobalBlock` plus a factorized user x item term: logit += <meta embedding, item tower(item)>.

    An MLP over concatenated inputs learns such a product poorly (Rendle et al., RecSys 2020, "Neural
    collaborative filtering vs. matrix factorization revisited"); with the term, the adapted meta
    embedding of a task re-ranks the items for that task instead of mostly shifting its bias. The item
    tower (embeddings of `item_features`, then a linear map to `item_dim` = the meta embedding's width)
    does not read the meta embedding, so it joins the `features_part` computed once per task batch."""

    def __init__(self, features, item_features, item_dim: int = 8, **kwargs):
        super().__init__(features, **kwargs)
        self.item_dim = int(item_dim)
        self.item_inputs = FeatureEmbedding(item_features, self.embedding_dim, name="item_inputs")
        self.item_tower = keras.layers.Dense(self.item_dim, name="item_tower")

    def features_part(self, inputs):
        return tf.concat([super().features_part(inputs), self.item_tower(self.item_inputs(inputs))], -1)

    def call(self, inputs, training=False):
        embedding = tf.cast(inputs["meta_embedding"], self.compute_dtype)
        self._build_first(embedding)  # before `features_part` reads the first layer's kernel
        part = inputs[FEATURES_PART] if FEATURES_PART in inputs else self.features_part(inputs)
        mlp_part, item = part[..., :-self.item_dim], part[..., -self.item_dim:]
        logit = super().call({**inputs, FEATURES_PART: mlp_part}, training=training)
        return logit + tf.reduce_sum(embedding * item, -1, keepdims=True)

    def get_config(self):
        return {**super().get_config(), "item_features": [f.to_dict() for f in self.item_inputs.features],
                "item_dim": self.item_dim}


@dataclasses.dataclass(frozen=True)
class Variant:
    """A model of the comparison: `name` (report rows `name` and `name+FT`), its kind and options."""

    name: str
    kind: str
    options: tuple = ()  # ((key, value), ...): hashable keyword overrides for `build`
    baseline: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"variant {self.name!r}: unknown kind {self.kind!r}; choose one of {KINDS}")

    @property
    def kwargs(self) -> dict:
        return dict(self.options)

    @property
    def meta_learned(self) -> bool:
        return self.kind in ("maml", "limaml", "limaml_id")

    @property
    def reads_sequences(self) -> bool:
        return self.kwargs.get("meta_block", "mlp") == "transformer"


DEFAULT_VARIANTS = (
    Variant("vanilla", "vanilla", baseline=True),
    Variant("W&D-ID", "wd_id", baseline=True),
    Variant("MAML", "maml", baseline=True),
    Variant("LiMAML", "limaml"),
    Variant("LiMAML-ID", "limaml_id"),
)
TARGET = "LiMAML+FT"  # the row the paired test compares with the best baseline


def _top_level_split(text: str, sep: str = ",") -> list[str]:
    """`text` split at the `sep`s outside brackets: "a=1,b=(64, 32)" -> ["a=1", "b=(64, 32)"]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "([{") - (ch in ")]}")
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def parse_variant(text: str) -> Variant:
    """"NAME=KIND[:key=value,...]" (values are Python literals, else strings), e.g.
    "LiMAML-mixed=limaml:mixed_loss_weight=0.5" or "wide=limaml:meta_hidden=(64, 32)"; a trailing "!" on
    NAME marks a baseline."""
    name, _, rest = text.partition("=")
    kind, _, opts = rest.partition(":")
    if not name or not kind:
        raise ValueError(f"--variant {text!r}: expected NAME=KIND[:key=value,...]")
    options = []
    for item in filter(None, _top_level_split(opts)):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--variant {text!r}: option {item!r} is not key=value")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
        options.append((key.strip(), value))
    baseline = name.endswith("!")
    return Variant(name.rstrip("!"), kind.strip(), tuple(options), baseline)


def variants_for(names, extra=()) -> list[Variant]:
    known = {v.name: v for v in DEFAULT_VARIANTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; built in: {sorted(known)} (add others with --variant)")
    return [known[n] for n in names] + list(extra)


def _check_model_options(cls, options: dict):
    accepted = set(inspect.signature(LiMAMLModel.__init__).parameters) - {"self", "kwargs", "meta_block",
                                                                        "global_block", "spec"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"{cls.__name__} has no option(s) {unknown} (it accepts {sorted(accepted)} plus "
                         f"{list(BLOCK_OPTIONS)} handled by the factory)")


def _is_history(feature) -> bool:
    return feature.name.startswith("hist_") or feature.name in HISTORY_FEATURES


def block_features(spec, history: bool = True, item_aware: bool = False):
    """(MLP meta block's features, global block's features). The global block also reads the (non-ID)
    meta features, so every model sees the same information whatever its meta block."""
    keep = lambda feats: tuple(f for f in feats if (history or not _is_history(f))  # noqa: E731
                               and f.kind not in SEQUENCE_KINDS)
    user = keep(mlp_meta_features(spec))
    items = keep(f for f in spec.other_features if f.name in ITEM_FEATURES) if item_aware else ()
    return user + items, keep(spec.other_features) + user


def build(kind: str, spec, cfg, **options):
    """A compiled model of `kind` (see module docstring); `cfg` gives the defaults (sizes, α, n, β)."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {KINDS}")
    get = lambda key: options.pop(key, getattr(cfg, key))  # noqa: E731
    dropout = float(options.pop("dropout", 0.0))
    meta_dim, meta_hidden, global_hidden, beta = (get(k) for k in ("meta_dim", "meta_hidden", "global_hidden",
                                                                    "learning_rate"))
    meta_features, global_features = block_features(spec, bool(options.pop("history", True)),
                                                    bool(options.pop("item_aware", False)))
    factor_dim = int(options.pop("factor_dim", 0))
    if factor_dim:
        meta_dim = meta_dim + factor_dim  # [e, u]: the MLP global block reads e, the item factors meet u
    meta_kind = options.pop("meta_block", "mlp")
    seq_sizes = {k: options.pop(f"seq_{k}", d) for k, d in (("dim", 16), ("heads", 2), ("layers", 1))}
    if meta_kind not in META_BLOCKS:
        raise ValueError(f"meta_block={meta_kind!r}: choose one of {META_BLOCKS}")
    if meta_kind == "transformer":
        if kind not in ("vanilla", "limaml") or dropout:
            raise ValueError(f"meta_block='transformer' goes with the kinds vanilla and limaml, without dropout "
                             f"(got kind {kind!r}, dropout {dropout})")
        sequences = tuple(f for f in spec.meta_features if f.kind in SEQUENCE_KINDS)
        if not sequences:
            raise ValueError("meta_block='transformer': the spec has no sequence features (the split adds them when "
                             "Config.sequence_len > 0 and a variant reads them)")
        meta = TransformerMetaBlock(sequences + meta_features, output_dim=meta_dim, hidden_units=meta_hidden,
                                    model_dim=seq_sizes["dim"], num_heads=seq_sizes["heads"],
                                    num_layers=seq_sizes["layers"])
    elif kind in ("wd_id", "limaml_id"):
        meta = IDEmbeddingMetaBlock(spec.feature("user_id"), output_dim=meta_dim)
    elif dropout:
        meta = DropoutMLPMetaBlock(meta_features, dropout=dropout, output_dim=meta_dim, hidden_units=meta_hidden)
    else:
        meta = MLPMetaBlock(meta_features, output_dim=meta_dim, hidden_units=meta_hidden)
    definitions = options.pop("definitions", None)
    if definitions:
        if kind != "limaml":
            raise ValueError(f"definitions={definitions!r} is an option of kind 'limaml' only, not {kind!r}")
        if meta_kind != "mlp":
            raise ValueError(f"definitions={definitions!r} builds one MLP meta block per definition: drop "
                             f"meta_block={meta_kind!r}")
        genres = (spec.feature("genres"),) if "genres" not in {f.name for f in meta_features} else ()
        meta = {d: MLPMetaBlock(meta_features + (genres if d != "user" else ()), output_dim=meta_dim,
                                hidden_units=meta_hidden, name=f"meta_{d}")  # user x genre: + the genres
                for d in definitions}
    if options.pop("dot", False):
        items = tuple(f for f in spec.other_features if f.name in ITEM_TOWER_FEATURES)
        glob = DotMLPGlobalBlock(global_features, items, item_dim=meta_dim, hidden_units=global_hidden,
                                 dropout=dropout)
    else:
        glob = MLPGlobalBlock(global_features, hidden_units=global_hidden, dropout=dropout)
    if factor_dim:
        items = tuple(f for f in spec.other_features if f.name in ITEM_TOWER_FEATURES)
        glob = FactorizedGlobalBlock(glob, items, factor_dim=factor_dim)
    alpha = options.pop("inner_learning_rate", cfg.inner_learning_rate)
    common = dict(eval_steps=options.pop("eval_steps", getattr(cfg, "eval_steps", 1)), eval_learning_rate=alpha)
    cls = VanillaModel if kind in ("vanilla", "wd_id") else LiMAMLModel
    _check_model_options(cls, options)
    if cls is VanillaModel:
        model = VanillaModel(meta, glob, spec, name=kind, **common, **options)
    else:
        defaults = {"inner_steps": cfg.inner_steps, "support_dropout": getattr(cfg, "support_dropout", 0.0)}
        model = LiMAMLModel(meta, glob, spec, **{**defaults, **options}, inner_learning_rate=alpha,
                            adapt_global_block=kind == "maml", name=kind, **common)
    model.compile(optimizer=keras.optimizers.Adam(beta, global_clipnorm=1.0))
    return model
