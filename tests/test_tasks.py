"""Task grouping, time splits, padding and bad-input errors."""

import numpy as np
import pandas as pd
import pytest

import limaml_tf as lt
from limaml_tf.features import FeatureEncoder
from limaml_tf.tasks import recent_tasks


def _times(ts, name):
    return np.where(ts.arrays[f"{name}_mask"] > 0, ts.arrays[f"{name}_time"], np.nan)


def test_no_query_sample_is_earlier_than_a_support_sample(synthetic):
    df, spec = synthetic
    ts = lt.split_tasks(df, spec, max_samples_per_task=20)
    support, query = _times(ts, "support"), _times(ts, "query")
    has_both = (ts.arrays["support_mask"].sum(1) > 0) & (ts.arrays["query_mask"].sum(1) > 0)
    assert has_both.all()
    assert (np.nanmax(support, 1) <= np.nanmin(query, 1)).all()
    # and within each set, real samples are in time order
    for t in (support, query):
        d = np.diff(t, axis=1)
        assert (d[~np.isnan(d)] >= 0).all()


def test_cap_keeps_the_most_recent_samples(synthetic):
    df, spec = synthetic
    cap = 10
    ts = lt.split_tasks(df, spec, max_samples_per_task=cap)
    for i, key in enumerate(ts.task_keys):
        task_times = np.sort(df.loc[df[spec.task_key] == key, spec.timestamp].to_numpy())
        kept = np.concatenate([_times(ts, "support")[i], _times(ts, "query")[i]])
        kept = np.sort(kept[~np.isnan(kept)])
        np.testing.assert_array_equal(kept, task_times[-cap:])


def test_recent_tasks_equal_a_per_task_reference(synthetic):
    """The vectorized recent_tasks == each task's rows sorted by (time, row order), the last N kept,
    padded with the last one (ties in time on purpose)."""
    df, spec = synthetic
    df = df.assign(timestamp=(df.timestamp // 86_400) * 86_400).sample(frac=1.0, random_state=0)
    n = 7
    got = recent_tasks(df, spec, n).arrays
    assert list(got["task_key"]) == sorted(df[spec.task_key].astype(str).unique())
    for i, key in enumerate(got["task_key"]):
        rows = df[df[spec.task_key] == key].reset_index(drop=True)
        rows = rows.iloc[np.lexsort((np.arange(len(rows)), rows.timestamp.to_numpy()))].tail(n)
        slots = np.minimum(np.arange(n), len(rows) - 1)
        np.testing.assert_array_equal(got["support_mask"][i], np.arange(n) < len(rows))
        np.testing.assert_array_equal(got["support_time"][i], rows.timestamp.to_numpy()[slots])
        np.testing.assert_array_equal(got["support_label"][i], rows[spec.label].to_numpy(np.float32)[slots])
        for f, values in spec.raw_arrays(rows).items():
            np.testing.assert_array_equal(got["support"][f][i], values[slots])


def test_split_fraction_and_masks(synthetic):
    df, spec = synthetic
    ts = lt.split_tasks(df, spec, max_samples_per_task=20, support_fraction=0.75)
    assert (ts.support_length, ts.query_length) == (15, 5)
    n_s, n_q = ts.arrays["support_mask"].sum(1), ts.arrays["query_mask"].sum(1)
    np.testing.assert_array_equal(n_s, np.floor((n_s + n_q) * 0.75))
    # padded slots repeat the last real sample (valid values, mask 0)
    i = int(np.argmin(n_s))
    k = int(n_s[i])
    if k < ts.support_length:
        assert ts.arrays["support"]["item_id"][i, k] == ts.arrays["support"]["item_id"][i, k - 1]


def test_time_split_and_paired_tasks_respect_time(synthetic):
    df, spec = synthetic
    train, valid, test = lt.time_split(df, spec, (0.6, 0.8))
    assert train[spec.timestamp].max() < valid[spec.timestamp].min()
    assert valid[spec.timestamp].max() < test[spec.timestamp].min()
    ev = lt.paired_tasks(valid, test, spec, max_support=8, max_query=8)
    assert set(ev.task_keys) == set(test[spec.task_key])
    s, q = _times(ev, "support"), _times(ev, "query")
    both = ~np.isnan(s).all(1)
    assert (np.nanmax(s[both], 1) < np.nanmin(q[both], 1)).all()


def test_paired_tasks_cold_start_task_gets_an_empty_support_set(synthetic):
    """A test-period task with no validation samples is scored un-adapted: empty support, full query."""
    df, spec = synthetic
    _, valid, test = lt.time_split(df, spec, (0.6, 0.8))
    cold_users = sorted(set(test[spec.task_key]))[:3]
    valid = valid[~valid[spec.task_key].isin(cold_users)]  # these users have no validation samples
    ev = lt.paired_tasks(valid, test, spec, max_support=8, max_query=8)
    cold = set(test[spec.task_key]) - set(valid[spec.task_key])
    assert cold == set(cold_users)
    keys = list(ev.task_keys)
    for key in cold_users:
        i = keys.index(key)
        a = ev.arrays
        assert a["support_mask"][i].sum() == 0 and (a["support_label"][i] == 0).all()
        assert (a["support_time"][i] == 0).all()
        assert all((v[i] == "").all() if v.dtype == object else (v[i] == 0).all() for v in a["support"].values())
        n_test = int((test[spec.task_key] == key).sum())
        assert a["query_mask"][i].sum() == min(n_test, 8) > 0
        want = np.sort(test.loc[test[spec.task_key] == key, spec.timestamp].to_numpy())[:8]
        np.testing.assert_array_equal(a["query_time"][i][a["query_mask"][i] > 0], want)
    warm = [keys.index(k) for k in keys if k not in cold]
    assert (ev.arrays["support_mask"][warm].sum(1) > 0).all()  # every other task has a support set


def test_dataset_pads_the_last_batch(synthetic):
    df, spec = synthetic
    ts = lt.split_tasks(df, spec, max_samples_per_task=12)
    batches = list(ts.dataset(16, shuffle=False))
    assert all(b["query_mask"].shape == (16, ts.query_length) for b in batches)
    real = sum(int((b["query_mask"].numpy().sum(1) > 0).sum()) for b in batches)
    assert real == len(ts)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.drop(columns=["activity"]), "missing column"),
    (lambda d: d.assign(label=np.where(np.arange(len(d)) == 3, np.nan, d["label"])), "NaN"),
    (lambda d: d.assign(label=d["label"] * 2), "must be 0 or 1"),
    (lambda d: d.assign(activity=d["activity"].astype(str)), "convert it to float"),
    (lambda d: d.assign(hour=np.where(np.arange(len(d)) == 0, np.inf, d["hour"])), "NaN/inf"),
    (lambda d: d.assign(user_id=d["user_id"].where(np.arange(len(d)) != 1, None)), "task key"),
])
def test_bad_input_names_the_field(synthetic, mutate, message):
    df, spec = synthetic
    with pytest.raises(lt.FeatureError, match=message):
        lt.split_tasks(mutate(df.copy()), spec)


def test_spec_round_trip_and_encoder(synthetic):
    _, spec = synthetic
    spec = spec.__class__.from_json(spec.to_json())
    vocab_spec = lt.FeatureSpec("u", "t", "y", (lt.Feature("g", "categorical", vocabulary=("a", "b")),),
                                (lt.Feature("tags", "multi_valued", num_bins=8, max_len=3),))
    assert lt.FeatureSpec.from_json(vocab_spec.to_json()) == vocab_spec
    enc = FeatureEncoder(vocab_spec)({"g": np.array(["b", "zzz", ""]),
                                      "tags": np.array([["x", "", ""], ["", "", ""], ["x", "y", ""]])})
    np.testing.assert_array_equal(enc["g"].numpy(), [2, 0, 0])  # unknown and missing -> 0
    tags = enc["tags"].numpy()
    assert (tags[1] == 0).all() and tags[0, 0] == tags[2, 0] > 0 and tags[2, 1] > 0 and tags[0, 1] == 0


def test_multi_valued_accepts_lists_and_strings():
    from limaml_tf.raw_data import multi_values_to_array
    out = multi_values_to_array(pd.Series([["a", "b"], "c|d|e|f", None, []]), 3)
    assert out.tolist() == [["a", "b", ""], ["c", "d", "e"], ["", "", ""], ["", "", ""]]
