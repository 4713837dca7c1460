"""The protocols' splits on tiny MovieLens fixtures: who trains, who is scored, on which support."""

import numpy as np
import pytest

from limaml_eval import Config, make_split
from limaml_eval.protocols import split_users
from limaml_tf.movielens import load_tasks_frame
from movielens_fixtures import write_ml100k


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    path = write_ml100k(tmp_path_factory.mktemp("ml") / "ml-100k", extra_users=36, ratings_per_user=16)
    return load_tasks_frame("ml-100k", str(path))


@pytest.fixture(scope="module")
def varied_frame(tmp_path_factory):
    """40 users with 8 .. 125 ratings (user i keeps its first 8 + 3 i), for user-cold's 13-100 filter."""
    path = write_ml100k(tmp_path_factory.mktemp("mlv") / "ml-100k", extra_users=36, ratings_per_user=130)
    df = load_tasks_frame("ml-100k", str(path))
    keep = df.groupby("task").cumcount() < 8 + 3 * (df["user_id"].astype(int) - 1)
    return df[keep].reset_index(drop=True)


def _real(tasks, name):
    """Per task: the real (unmasked) slots of arrays[name] ("support_time") or of a raw feature
    ("query_hist_count" = arrays["query"]["hist_count"])."""
    which, _, rest = name.partition("_")
    a, m = tasks.arrays, tasks.arrays[f"{which}_mask"] > 0
    values = a[name] if name in a else a[which][rest]
    return [values[t][m[t]] for t in range(len(tasks))]


CFG = Config(support_sizes=(3, 5), max_query=8, max_train_samples=12)


def test_user_split_is_80_10_10_disjoint_and_deterministic_by_seed():
    users = [str(u) for u in range(1, 101)]
    a = split_users(users, 7)
    assert [len(x) for x in a] == [80, 10, 10]
    assert set(np.concatenate(a)) == set(users)
    b = split_users(list(reversed(users)), 7)  # order of the input does not matter
    assert all((x == y).all() for x, y in zip(a, b))
    c = split_users(users, 8)
    assert not (a[2] == c[2]).all()


def test_few_shot_split(frame):
    s = make_split("few-shot", frame, 0, CFG)
    train_users, val_users, test_users = (set(x.task_keys) for x in (s.train, s.validation["K=3"], s.test["K=3"]))
    assert (len(train_users), len(val_users), len(test_users)) == (32, 4, 4)
    assert not train_users & val_users and not train_users & test_users and not val_users & test_users
    # the ID block's vocabulary is the training users: evaluation users are unseen
    assert set(s.spec.feature("user_id").vocabulary) == train_users
    assert set(s.validation["K=5"].task_keys) == val_users and set(s.test["K=5"].task_keys) == test_users
    for k in (3, 5):
        for tasks in (s.validation[f"K={k}"], s.test[f"K={k}"]):
            a = tasks.arrays
            assert (a["support_mask"].sum(1) == k).all()
            assert ((a["query_mask"].sum(1) >= 1) & (a["query_mask"].sum(1) <= CFG.max_query)).all()
            last_support = np.where(a["support_mask"] > 0, a["support_time"], -np.inf).max(1)
            first_query = np.where(a["query_mask"] > 0, a["query_time"], np.inf).min(1)
            assert (last_support < first_query).all()  # support strictly before query
            for key, times, q_times in zip(tasks.task_keys, _real(tasks, "support_time"), _real(tasks, "query_time")):
                user = frame[frame["task"] == key].sort_values("timestamp", kind="stable")
                assert np.array_equal(times, user["timestamp"].to_numpy()[:k])  # the first k ratings
                later = user["timestamp"].to_numpy()[k:]
                assert np.array_equal(q_times, later[later > times[-1]][:CFG.max_query])
            # history features of the query: the support only (k ratings), never another query label
            for hist in _real(tasks, "query_hist_count"):
                assert np.allclose(hist, np.log1p(k))
    # training users: chronological 75/25 tasks of the most recent 12 ratings
    a = s.train.arrays
    assert ((a["support_mask"].sum(1) == 9) & (a["query_mask"].sum(1) == 3)).all()
    assert (np.where(a["support_mask"] > 0, a["support_time"], -np.inf).max(1)
            <= np.where(a["query_mask"] > 0, a["query_time"], np.inf).min(1)).all()


def test_first_k_training_episodes_are_shaped_like_the_evaluation(frame):
    """train_episodes="first-k": each training user's support is its first k ratings (k one of the support
    sizes), its query the next ones, at most max_train_samples in all; the evaluation tasks are unchanged."""
    cfg = Config(support_sizes=(3, 5), max_query=8, max_train_samples=12, train_episodes="first-k")
    s, plain = make_split("few-shot", frame, 0, cfg), make_split("few-shot", frame, 0, CFG)
    a = s.train.arrays
    sizes = a["support_mask"].sum(1)
    assert set(sizes) == {3, 5} and ((sizes + a["query_mask"].sum(1)) == 12).all()
    for key, times, q_times in zip(s.train.task_keys, _real(s.train, "support_time"), _real(s.train, "query_time")):
        user = frame[frame["task"] == key].sort_values("timestamp", kind="stable")["timestamp"].to_numpy()
        assert np.array_equal(times, user[:len(times)]) and np.array_equal(q_times, user[len(times):12])
    assert set(s.train.task_keys) == set(plain.train.task_keys)
    np.testing.assert_array_equal(s.test["K=3"].arrays["query_time"], plain.test["K=3"].arrays["query_time"])
    with pytest.raises(ValueError, match="train_episodes"):
        Config(train_episodes="random")


def test_a_share_of_the_training_users_keeps_the_evaluation_users(frame):
    fewer = make_split("few-shot", frame, 0, Config(support_sizes=(3, 5), max_query=8, max_train_samples=12,
                                                    train_user_fraction=0.25))
    plain = make_split("few-shot", frame, 0, CFG)
    assert len(fewer.train) == 8 and set(fewer.train.task_keys) < set(plain.train.task_keys)
    assert list(fewer.test["K=3"].task_keys) == list(plain.test["K=3"].task_keys)
    assert list(fewer.validation["K=5"].task_keys) == list(plain.validation["K=5"].task_keys)


def test_few_shot_is_deterministic_by_seed(frame):
    a, b, c = (make_split("few-shot", frame, seed, CFG) for seed in (0, 0, 1))
    assert list(a.test["K=5"].task_keys) == list(b.test["K=5"].task_keys)
    np.testing.assert_array_equal(a.test["K=5"].arrays["query_label"], b.test["K=5"].arrays["query_label"])
    assert set(a.test["K=5"].task_keys) != set(c.test["K=5"].task_keys)


def test_few_shot_query_features_ignore_query_labels(frame):
    """Flipping every rating after an evaluation user's 5th (features rebuilt from the ratings)
    changes no feature of any K=5 evaluation task: the query sees the support only."""
    from limaml_tf.movielens import interactions

    cfg = Config(support_sizes=(5,), max_query=8, max_train_samples=12)
    s = make_split("few-shot", frame, 0, cfg)
    eval_users = set(s.test["K=5"].task_keys) | set(s.validation["K=5"].task_keys)
    pos = frame.groupby("task").cumcount()
    flip = ((pos >= 5) & frame["task"].isin(eval_users)).to_numpy()
    ratings = frame[["user_id", "movie_id", "rating", "timestamp"]].assign(
        rating=np.where(flip, 6 - frame["rating"], frame["rating"]))
    users = frame[["user_id", "gender", "age", "occupation", "zip"]].drop_duplicates("user_id")
    users = users.assign(age=users["age"].astype(int))
    movies = frame[["movie_id", "genres", "release_year"]].drop_duplicates("movie_id")
    rebuilt = interactions(ratings, users, movies)
    rebuilt = rebuilt.assign(task=rebuilt["user_id"].astype(str))
    assert not np.allclose(rebuilt["hist_pos_rate"], frame["hist_pos_rate"])  # the flip reaches the features
    t = make_split("few-shot", rebuilt, 0, cfg)
    for x, y in ((s.test["K=5"], t.test["K=5"]), (s.validation["K=5"], t.validation["K=5"])):
        for f in x.arrays["query"]:
            np.testing.assert_array_equal(x.arrays["query"][f], y.arrays["query"][f], err_msg=f)
        assert not np.array_equal(x.arrays["query_label"], y.arrays["query_label"])  # the check can fail


def test_user_cold_split(varied_frame):
    counts = varied_frame.groupby("task").size()
    eligible = set(counts[(counts >= 13) & (counts <= 100)].index)
    assert 0 < len(eligible) < len(counts)  # the fixture has users on both sides of the filter
    s = make_split("user-cold", varied_frame, 0, CFG)
    name = "all-but-10"
    parts = [set(s.train.task_keys), set(s.validation[name].task_keys), set(s.test[name].task_keys)]
    assert set().union(*parts) == eligible
    assert sum(map(len, parts)) == len(eligible)  # no user in two parts
    n = len(eligible)
    assert [len(p) for p in parts] == [round(0.8 * n), round(0.1 * n), n - round(0.8 * n) - round(0.1 * n)]
    assert set(s.spec.feature("user_id").vocabulary) == parts[0]
    shuffled = 0
    for tasks in (s.train, s.validation[name], s.test[name]):
        a = tasks.arrays
        assert (a["query_mask"].sum(1) == 10).all()  # exactly 10 query ratings
        for t, key in enumerate(tasks.task_keys):
            assert a["support_mask"][t].sum() + 10 == counts[key]  # support = the rest
            s_t = a["support_time"][t][a["support_mask"][t] > 0]
            q_t = a["query_time"][t][a["query_mask"][t] > 0]
            shuffled += q_t.min() < s_t.max()  # random, not the last 10
    assert shuffled > 0
    again = make_split("user-cold", varied_frame, 0, CFG)
    np.testing.assert_array_equal(again.test[name].arrays["query_time"], s.test[name].arrays["query_time"])


def test_time_protocol_test_set_is_todays(frame):
    from limaml_eval.paper import Config as PaperConfig
    from limaml_eval.paper_tables import prepare

    cfg = Config(protocol="time", quantiles=(0.6, 0.8), max_train_samples=12, time_max_support=8, time_max_query=8)
    s = make_split("time", frame, 0, cfg)
    old = prepare(PaperConfig(quantiles=(0.6, 0.8), max_train_samples=12, max_support=8, max_query=8), frame)
    test = s.test["validation-period"]
    assert list(test.task_keys) == list(old.evaluation.task_keys) and s.unseen == old.unseen
    for key in ("support_mask", "query_mask", "query_label", "support_time", "query_time"):
        np.testing.assert_array_equal(test.arrays[key], old.evaluation.arrays[key])
    np.testing.assert_array_equal(s.train.arrays["query_time"], old.train.arrays["query_time"])
    # validation: query = the validation period, support = the training period, both before the test period
    val = s.validation["validation-period"].arrays
    train_end = frame["timestamp"].quantile(0.6, interpolation="nearest")
    assert (np.where(val["support_mask"] > 0, val["support_time"], -np.inf).max(1) < train_end).all()
    q = np.where(val["query_mask"] > 0, val["query_time"], np.nan)
    assert np.nanmin(q) >= train_end and np.nanmax(q) < test.arrays["query_time"][test.arrays["query_mask"] > 0].min()
