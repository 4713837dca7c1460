"""`limaml reproduce`: report numbers from known inputs, and a tiny end-to-end run + merge."""

import json
import os

import numpy as np
import pytest

from limaml_tf.artifacts import AGGREGATIONS
from limaml_eval.paper_report import render_report
from limaml_eval.paper import SLICES, TABLE3, TABLE4, Config
from limaml_eval.paper_tables import merge, reproduce
from movielens_fixtures import write_ml100k


def _fake_run(seed, vanilla_auc, limaml_ft_auc):
    rows = list(TABLE3) + list(TABLE4) + [f"agg:{a}" for a in AGGREGATIONS] + ["n=1", "n=2"]
    auc = {r: {s: 0.5 for s in SLICES} for r in rows}
    auc["vanilla"] = {s: vanilla_auc for s in SLICES}
    auc["LiMAML+FT"] = {s: limaml_ft_auc for s in SLICES}
    auc["n=1"] = dict(auc["LiMAML+FT"])
    return {"seed": seed, "auc": auc, "seconds": {"vanilla": 10.0, "n=1": 20.0, "n=2": 35.0},
            "curves": {"vanilla": [0.7, 0.6]}}


def test_report_numbers_are_gains_over_vanilla_mean_and_std():
    runs = [_fake_run(0, 0.70, 0.77), _fake_run(1, 0.80, 0.80)]  # gains +10% and 0%
    report = render_report(runs, Config(table9_steps=(1, 2)), {"interactions": 10}, ["limaml reproduce"], [])
    table3 = report.split("## Table 3")[1].split("Test AUC")[0]
    all_row = next(line for line in table3.splitlines() if line.startswith("| all |"))
    cells = [c.strip() for c in all_row.strip("|").split("|")]
    assert cells[1] == "+0.00% ± 0.00"  # vanilla vs itself
    assert cells[1 + TABLE3.index("LiMAML+FT")] == "+5.00% ± 7.07"  # sample std (ddof = 1) of +10 % and 0 %
    table9 = report.split("## Table 9")[1].split("## Table 14")[0]
    assert "| 1 | +100% ± 0 | +105% |" in table9 and "| 2 | +250% ± 0 |" in table9
    assert "+1.47%" in table3  # the paper's number beside ours


@pytest.mark.heavy
def test_tiny_end_to_end_run_and_merge(tmp_path):
    from limaml_tf.movielens import load_tasks_frame

    frame = load_tasks_frame("ml-100k", str(write_ml100k(tmp_path / "ml", extra_users=36, ratings_per_user=16)))
    cfg = Config(epochs=1, tasks_per_batch=8, max_train_samples=12, max_support=8, max_query=8, meta_dim=2,
                 meta_hidden=(4,), global_hidden=(4,), seeds=(0,), quantiles=(0.6, 0.8),
                 tables=("3", "14"), warm_start_epochs=1)  # Tables 4 and 9 add models only; rendering checked above
    out = reproduce(cfg, str(tmp_path / "s0"), frame=frame, log=lambda *_: None)
    run = out["runs"][0]
    for row in list(TABLE3) + [f"agg:{a}" for a in AGGREGATIONS]:
        assert 0.0 <= run["auc"][row]["all"] <= 1.0, row
    assert set(run["curves"]) == {"vanilla", "MAML", "LiMAML"}
    assert "## Table 14" in out["report"] and "## Table 4" not in out["report"]
    assert out["data"]["unseen_test_users"] > 0
    assert "warm_start_epochs = 1" in out["report"]
    # without fine-tuning, the entire-network MAML model and LiMAML differ from their +FT scores
    assert run["auc"]["LiMAML"]["all"] != run["auc"]["LiMAML+FT"]["all"]
    for name in ("report.md", "results.json", "auc_gain_by_slice.png", "learning_curves.png"):
        assert os.path.getsize(tmp_path / "s0" / name) > 0

    # a second "seed" made from the first (merging only reads results.json)
    second = json.loads((tmp_path / "s0" / "results.json").read_text())
    second["runs"][0]["seed"] = 1
    second["runs"][0]["auc"]["LiMAML+FT"]["all"] *= 0.9
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "results.json").write_text(json.dumps(second))
    report = merge([str(tmp_path / "s0"), str(tmp_path / "s1")], str(tmp_path / "all"), "limaml reproduce --merge")
    merged = json.loads((tmp_path / "all" / "results.json").read_text())
    assert [r["seed"] for r in merged["runs"]] == [0, 1]
    vanilla = [r["auc"]["vanilla"]["all"] for r in merged["runs"]]
    limaml = [r["auc"]["LiMAML+FT"]["all"] for r in merged["runs"]]
    gains = 100 * (np.array(limaml) / np.array(vanilla) - 1)
    assert f"{gains.mean():+.2f}% ± {gains.std(ddof=1):.2f}" in report  # the sample std, as every report
    other = json.loads((tmp_path / "s1" / "results.json").read_text())
    other["config"]["epochs"] = 2
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "results.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="settings or data differ"):
        merge([str(tmp_path / "s0"), str(tmp_path / "x")], str(tmp_path / "bad"), "m")

