"""`limaml reproduce --protocol ...`: the report from known numbers, the CLI, a tiny end-to-end run."""

import json
import os

import pytest

from limaml_tf.experiments import Config
from limaml_tf.experiments.models import parse_variant
from limaml_tf.experiments.report import render_report
from movielens_fixtures import write_ml100k

ROWS = ["vanilla", "vanilla+FT", "LiMAML", "LiMAML+FT"]


def _metrics(auc, per_user=None):
    return {"auc": auc, "user_auc": auc - 0.1, "ndcg@5": 0.5, "ndcg@10": 0.6, "per_user_auc": per_user or {}}


def _fake_run(seed, vanilla_ft, limaml_ft):
    chosen = {r: {"row": r, "setting": "K=5", "epoch": 2, "steps": 0 if "+" not in r else 1,
                  "lr": None if "+" not in r else 0.5, "val_auc": 0.6} for r in ROWS}
    chosen["vanilla+FT"]["val_auc"] = 0.65  # the best baseline on validation
    test = {"vanilla": _metrics(0.70), "vanilla+FT": _metrics(vanilla_ft), "LiMAML": _metrics(0.69),
            "LiMAML+FT": _metrics(limaml_ft)}
    sens = {"vanilla": {"K=5": 0.5}, "12": {"0.05": {"K=5": {"val_auc": 0.55, "epoch": 1}},
                                            "0.5": {"K=5": {"val_auc": 0.45, "epoch": 2}}}}
    return {"seed": seed, "split": {"train_users": 754}, "candidates": [{}] * 7, "chosen": {"K=5": chosen},
            "test": {"K=5": test}, "seconds": {"vanilla": 1.0, "LiMAML": 2.0},
            "curves": {"vanilla": [0.7, 0.6], "LiMAML": [0.7, 0.65]}, "rows": ROWS,
            "baseline_rows": ["vanilla", "vanilla+FT"], "best_baseline": {"K=5": "vanilla+FT"}, "sensitivity": sens}


def _row(text, first_cell):
    line = next(x for x in text.splitlines() if x.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_tables_from_known_numbers():
    runs = [_fake_run(0, 0.70, 0.72), _fake_run(1, 0.71, 0.75)]  # LiMAML+FT - vanilla+FT: 0.02, 0.04
    cfg = Config(models=("vanilla", "LiMAML"), sensitivity=("12",), task_learning_rates=(0.05, 0.5))
    report = render_report(runs, cfg, ["limaml reproduce --protocol few-shot"], [])
    table = report.split("## Test users, K=5")[1]
    assert _row(table, "LiMAML+FT")[1] == "0.7350 ± 0.0212"  # mean ± sample std of 0.72, 0.75
    paired = report.split("### Paired test, K=5")[1]
    assert "seed 0: vanilla+FT, seed 1: vanilla+FT" in paired
    cells = _row(paired, "AUC (pooled)")
    assert cells[1] == "+0.0300 ± 0.0141" and cells[2] == "0.205" and cells[3] == "2"  # t = 3, 1 dof
    assert _row(report.split("### Settings chosen")[1], "vanilla+FT")[1] == "epoch 2, 1 step(s), lr 0.5 (0.6500)"
    sens = report.split("### Table 12")[1]
    assert _row(sens, "0.05")[1:] == ["+10.00% ± 0.00", "0.5500 ± 0.0000", "see paper"]
    assert _row(sens, "0.5")[1] == "-10.00% ± 0.00"
    assert "limaml reproduce --protocol few-shot" in report and "nDCG@k" in report


def test_cli_options():
    from limaml_tf.cli import build_parser
    from limaml_tf.experiments.command import generic_config, main

    a = build_parser().parse_args(["reproduce", "--protocol", "few-shot", "--support-size", "5", "20", "--quick",
                                   "--variant", "LiMAML-mixed=limaml:mixed_loss_weight=0.5,first_order=True",
                                   "--ft-learning-rates", "0.1", "1"])
    cfg = generic_config(a)
    assert cfg.support_sizes == (5, 20) and cfg.seeds == (0,) and cfg.ft_learning_rates == (0.1, 1.0)
    extra = cfg.variant_list[-1]
    assert extra.name == "LiMAML-mixed" and extra.kwargs == {"mixed_loss_weight": 0.5, "first_order": True}
    assert parse_variant("Tuned!=vanilla:learning_rate=0.001").baseline
    with pytest.raises(ValueError, match="time protocol"):
        main(build_parser().parse_args(["reproduce", "--protocol", "user-cold", "--tables", "3"]))
    with pytest.raises(ValueError, match="unknown kind"):
        parse_variant("X=resnet")


def test_unknown_model_option_names_it():
    from limaml_tf.experiments.models import _check_model_options
    from limaml_tf.model import LiMAMLModel

    with pytest.raises(ValueError, match="no_such_option"):
        _check_model_options(LiMAMLModel, {"no_such_option": 1})
    _check_model_options(LiMAMLModel, {"support_dropout": 0.5, "first_order": True})


def test_tiny_few_shot_run_through_the_cli_and_merge(tmp_path):
    from limaml_tf.cli import main

    data = write_ml100k(tmp_path / "ml", extra_users=36, ratings_per_user=16)
    out = tmp_path / "s0"
    argv = ["reproduce", "--protocol", "few-shot", "--quick", "--data-path", str(data), "--support-size", "3", "5",
            "--models", "vanilla", "LiMAML", "--epochs", "2", "--ft-steps", "1", "--ft-learning-rates", "0.1",
            "--tasks-per-batch", "8", "--seeds", "0", "--out", str(out), "--verbose", "0"]
    assert main(argv) == 0
    for name in ("report.md", "results.json", "auc_vs_k.png", "learning_curves.png"):
        assert os.path.getsize(out / name) > 0
    results = json.loads((out / "results.json").read_text())
    run = results["runs"][0]
    assert results["protocol"] == "few-shot" and run["rows"] == ROWS
    for setting in ("K=3", "K=5"):
        for row in ROWS:
            assert 0 <= run["test"][setting][row]["auc"] <= 1
            assert run["chosen"][setting][row]["epoch"] in (1, 2)
        assert run["best_baseline"][setting] in ("vanilla", "vanilla+FT")
    # every candidate recorded: 2 epochs x 2 settings x (vanilla: 1 + 1; LiMAML: 1 + 1 + its own (1, 0.5))
    assert len(run["candidates"]) == 2 * 2 * (2 + 3)
    report = (out / "report.md").read_text()
    assert "## Test users, K=3" in report and "### Paired test, K=5" in report and "--protocol few-shot" in report

    second = dict(results, runs=[dict(run, seed=1)])
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "results.json").write_text(json.dumps(second))
    assert main(["reproduce", "--merge", str(out), str(tmp_path / "s1"), "--out", str(tmp_path / "all")]) == 0
    merged = json.loads((tmp_path / "all" / "results.json").read_text())
    assert [r["seed"] for r in merged["runs"]] == [0, 1]
    assert "seed 1: " in (tmp_path / "all" / "report.md").read_text()
