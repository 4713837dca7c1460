"""Metrics, the choice on validation and the paired tests, against hand-computed values."""

import math

import numpy as np
import pandas as pd
import pytest

from limaml_eval.metrics import per_user_auc, per_user_ndcg, pooled_auc, summarize
from limaml_eval.stats import best_baseline, mean_std, paired_over_seeds, wilcoxon_users
from limaml_eval.tuning import choose, snapshot_epochs


def _pred(rows):
    return pd.DataFrame(rows, columns=["task_key", "label", "probability"])


# user a: the positive (0.9) is ranked 2nd, below a negative (0.95)
# user b: both positives above the negative
# user c: one class only (two positives)
# user d: no positive
# user e: its only positive at rank 6 of 7
PRED = _pred([("a", 1, 0.9), ("a", 0, 0.5), ("a", 0, 0.95),
              ("b", 1, 0.7), ("b", 1, 0.6), ("b", 0, 0.4),
              ("c", 1, 0.2), ("c", 1, 0.3),
              ("d", 0, 0.1), ("d", 0, 0.15),
              *[("e", int(i == 5), p) for i, p in enumerate((0.89, 0.79, 0.69, 0.59, 0.49, 0.39, 0.29))]])


def test_pooled_auc_by_hand():
    # positives {0.9, 0.3}, negatives {0.8, 0.1}: pairs ranked right: (0.9, 0.8), (0.9, 0.1), (0.3, 0.1) of 4
    assert pooled_auc(_pred([("u", 1, 0.9), ("u", 0, 0.8), ("v", 1, 0.3), ("v", 0, 0.1)])) == pytest.approx(0.75)
    assert math.isnan(pooled_auc(_pred([("u", 1, 0.9), ("u", 1, 0.8)])))


def test_per_user_auc_leaves_out_one_class_users():
    users = per_user_auc(PRED)
    # a: 0.9 beats 0.5 but not 0.95 -> 1/2; b: 1; e: 0.39 beats only 0.29 of 6 negatives -> 1/6
    assert users.to_dict() == pytest.approx({"a": 0.5, "b": 1.0, "e": 1 / 6})
    out = summarize(PRED)
    assert out["user_auc"] == pytest.approx((0.5 + 1.0 + 1 / 6) / 3)
    assert out["users_with_auc"] == 3 and out["users"] == 5


def test_ndcg_by_hand():
    # a: ranking 0.95 (0), 0.9 (1), 0.5 (0): DCG = 1/log2(3); ideal DCG = 1
    # b: positives first -> 1; c: all positive -> 1 (counted: >= 1 positive); d: no positive -> left out
    # e: the positive at rank 6: nDCG@5 = 0, nDCG@10 = 1/log2(7)
    a = 1 / math.log2(3)
    assert per_user_ndcg(PRED, 5).to_dict() == pytest.approx({"a": a, "b": 1.0, "c": 1.0, "e": 0.0})
    assert per_user_ndcg(PRED, 10).to_dict() == pytest.approx({"a": a, "b": 1.0, "c": 1.0, "e": 1 / math.log2(7)})
    out = summarize(PRED)
    assert out["ndcg@5"] == pytest.approx((a + 2) / 4)
    assert out["ndcg@10"] == pytest.approx((a + 2 + 1 / math.log2(7)) / 4)
    assert out["users_with_ndcg"] == 4
    # a user with a single query rating has no nDCG (sklearn needs >= 2 documents)
    assert per_user_ndcg(_pred([("x", 1, 0.5)]), 5).empty


def test_mean_std_uses_sample_std():
    assert mean_std([1.0, 3.0]) == pytest.approx((2.0, math.sqrt(2)))
    mean, std = mean_std([5.0, float("nan")])  # one finite value: a mean, no spread
    assert mean == 5.0 and math.isnan(std)
    assert all(math.isnan(x) for x in mean_std([]))


def test_both_report_families_print_the_same_mean_and_std():
    """The paper tables' report and the protocols' report format "m ± s" with one function (ddof = 1)."""
    from limaml_eval.markdown import fmt
    from limaml_eval.paper_report import _gain

    runs = [{"auc": {"LiMAML": {"all": a}, "vanilla": {"all": 0.5}}} for a in (0.505, 0.51, 0.52)]
    gains = [100 * (a / 0.5 - 1) for a in (0.505, 0.51, 0.52)]
    assert _gain(runs, "LiMAML", "all") == pytest.approx((sum(gains) / 3, float(np.std(gains, ddof=1))))
    assert fmt(mean_std(gains), "%", 2, True) == "+2.33% ± 1.53"


def _record(row, epoch, steps, lr, auc, setting="K=5"):
    return {"row": row, "setting": setting, "epoch": epoch, "steps": steps, "lr": lr, "val_auc": auc}


def test_choose_takes_the_best_validation_auc_and_the_cheapest_tie():
    records = [_record("v", 1, 0, None, 0.60), _record("v", 2, 0, None, 0.62), _record("v", 3, 0, None, 0.62),
               _record("v+FT", 1, 1, 0.1, 0.61), _record("v+FT", 1, 3, 0.1, 0.65), _record("v+FT", 1, 1, 0.5, 0.65),
               _record("v+FT", 2, 1, 0.5, float("nan")), _record("v", 1, 0, None, 0.7, setting="K=10")]
    chosen = choose(records)
    assert chosen["K=5"]["v"]["epoch"] == 2  # tie with epoch 3: fewer epochs
    assert (chosen["K=5"]["v+FT"]["steps"], chosen["K=5"]["v+FT"]["lr"]) == (1, 0.5)  # tie: fewer steps
    assert chosen["K=10"]["v"]["val_auc"] == 0.7
    assert snapshot_epochs(10, 3) == [3, 6, 9, 10] and snapshot_epochs(4, 1) == [1, 2, 3, 4]


def test_best_baseline_is_chosen_on_validation():
    chosen = {"vanilla": {"val_auc": 0.70}, "vanilla+FT": {"val_auc": 0.72}, "LiMAML+FT": {"val_auc": 0.9},
              "MAML": {"val_auc": float("nan")}}
    assert best_baseline(chosen, ["vanilla", "vanilla+FT", "MAML"]) == "vanilla+FT"
    assert best_baseline(chosen, []) is None


def _run(seed, target_auc, base_auc, per_user=None):
    test = {"LiMAML+FT": {"auc": target_auc, "per_user_auc": per_user or {}},
            "vanilla+FT": {"auc": base_auc, "per_user_auc": {}}}
    return {"seed": seed, "best_baseline": {"K=5": "vanilla+FT"}, "test": {"K=5": test}}


def test_paired_test_over_seeds_by_hand():
    runs = [_run(0, 0.71, 0.70), _run(1, 0.73, 0.70)]  # differences 0.01 and 0.03
    res = paired_over_seeds(runs, "K=5", "auc", "LiMAML+FT")
    assert res["diffs"] == pytest.approx([0.01, 0.03]) and res["baselines"] == ["vanilla+FT"] * 2
    assert res["mean"] == pytest.approx(0.02) and res["std"] == pytest.approx(math.sqrt(2) * 0.01)
    # t = 0.02 / (0.01 √2 / √2) = 2 with 1 degree of freedom (Cauchy): p = 1 - 2 atan(2) / π
    assert res["p"] == pytest.approx(1 - 2 * math.atan(2) / math.pi)
    one = paired_over_seeds(runs[:1], "K=5", "auc", "LiMAML+FT")
    assert one["n"] == 1 and math.isnan(one["p"]) and math.isnan(one["std"])


def test_wilcoxon_on_per_user_auc():
    a = {f"u{i}": 0.5 + 0.01 * i for i in range(1, 11)}
    b = {u: 0.5 for u in a} | {"only_b": 0.9}
    # all 10 differences positive: exact two-sided p = 2 / 2^10
    assert wilcoxon_users(a, b) == pytest.approx(2 / 2 ** 10)
    assert math.isnan(wilcoxon_users(b, b))
    np.testing.assert_allclose(wilcoxon_users(b, a), wilcoxon_users(a, b))


def test_paired_test_candidates_and_the_one_chosen_on_validation():
    from limaml_eval.report import _paired_table, candidate_rows, chosen_candidate

    def run(seed, val, test):
        rows = ["vanilla+FT", "a+FT", "b+FT", "b"]
        return {"seed": seed, "rows": rows, "baseline_rows": ["vanilla+FT"], "best_baseline": {"s": "vanilla+FT"},
                "chosen": {"s": {r: {"val_auc": v} for r, v in zip(rows, val)}},
                "test": {"s": {r: {"auc": t, "user_auc": t, "ndcg@5": t, "ndcg@10": t} for r, t in zip(rows, test)}}}

    # b+FT is better on validation (mean 0.75 vs 0.70) although a+FT is better on test: the pick ignores test
    runs = [run(0, [0.7, 0.7, 0.8, 0.5], [0.7, 0.9, 0.6, 0.5]), run(1, [0.7, 0.7, 0.7, 0.5], [0.7, 0.9, 0.8, 0.5])]
    assert candidate_rows(runs) == ["a+FT", "b+FT"]
    assert chosen_candidate(runs, "s") == "b+FT"
    text = "\n".join(_paired_table(runs, "s"))
    assert "chosen on the validation users" in text and "**b+FT**" in text
    a_part, b_part = text.split("b+FT minus")
    assert "| AUC (pooled) | +0.2000 ± 0.0000 | n/a | 2 |" in a_part  # a+FT: 0.9 - 0.7 on both seeds
    assert "| AUC (pooled) | +0.0000 ± 0.1414 | 1.000 | 2 |" in b_part  # b+FT: -0.1 and +0.1
    for r in runs:
        r["rows"].append("LiMAML+FT")
    assert candidate_rows(runs) == ["LiMAML+FT"]  # the default comparison keeps its single target
