"""`limaml reproduce --protocol ...`: the report from known numbers, the CLI, a tiny end-to-end run."""

import json
import os

import pytest

from limaml_eval import Config
from limaml_eval.models import parse_variant
from limaml_eval.report import render_report
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
    from limaml_cli import build_parser
    from limaml_cli.reproduce import generic_config, main

    a = build_parser().parse_args(["reproduce", "--protocol", "few-shot", "--support-size", "5", "20", "--quick",
                                   "--variant", "LiMAML-mixed=limaml:mixed_loss_weight=0.5,first_order=True",
                                   "--ft-learning-rates", "0.1", "1"])
    cfg = generic_config(a)
    assert cfg.support_sizes == (5, 20) and cfg.seeds == (0,) and cfg.ft_learning_rates == (0.1, 1.0)
    extra = cfg.variant_list[-1]
    assert extra.name == "LiMAML-mixed" and extra.kwargs == {"mixed_loss_weight": 0.5, "first_order": True}
    assert parse_variant("Tuned!=vanilla:learning_rate=0.001").baseline
    assert parse_variant("W=limaml:meta_hidden=(64, 32),meta_dim=16").kwargs == {"meta_hidden": (64, 32), "meta_dim": 16}
    with pytest.raises(ValueError, match="time protocol"):
        main(build_parser().parse_args(["reproduce", "--protocol", "user-cold", "--tables", "3"]))
    with pytest.raises(ValueError, match="unknown kind"):
        parse_variant("X=resnet")


def test_unknown_model_option_names_it():
    from limaml_eval.models import _check_model_options
    from limaml_tf.model import LiMAMLModel

    with pytest.raises(ValueError, match="no_such_option"):
        _check_model_options(LiMAMLModel, {"no_such_option": 1})
    _check_model_options(LiMAMLModel, {"support_dropout": 0.5, "first_order": True})


@pytest.mark.heavy
def test_tiny_few_shot_run_through_the_cli_and_merge(tmp_path):
    from limaml_cli import main

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


@pytest.mark.heavy
def test_validation_only_run_never_scores_a_test_user(tmp_path, monkeypatch):
    """--validation-only (exploration): every row chosen and tabled on validation users; the test users are
    never scored (score_test is not called) and nothing of them is written or logged."""
    from limaml_cli import main
    from limaml_eval import runner

    def no_test(*args, **kwargs):
        raise AssertionError("a test user was scored")

    monkeypatch.setattr(runner, "score_test", no_test)
    data = write_ml100k(tmp_path / "ml", extra_users=36, ratings_per_user=16)
    out = tmp_path / "explore"
    argv = ["reproduce", "--protocol", "few-shot", "--quick", "--data-path", str(data), "--support-size", "3",
            "--models", "vanilla", "--epochs", "1", "--ft-steps", "1", "--ft-learning-rates", "0.1",
            "--tasks-per-batch", "8", "--seeds", "0", "--out", str(out), "--verbose", "0", "--validation-only"]
    assert main(argv) == 0
    assert sorted(os.listdir(out)) == ["results.json", "validation.md"]
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["test"] == {"K=3": {}} and set(run["chosen"]["K=3"]) == {"vanilla", "vanilla+FT"}
    table = (out / "validation.md").read_text()
    assert "| vanilla+FT |" in table and "Test users are not read" in table


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    from limaml_eval.protocols import make_split
    from limaml_tf.movielens import load_tasks_frame

    data = write_ml100k(tmp_path_factory.mktemp("ml"), extra_users=20, ratings_per_user=12)
    cfg = Config.quick(support_sizes=(3,), epochs=3, tasks_per_batch=8, ft_steps=(1,), ft_learning_rates=(0.1,))
    return cfg, make_split("few-shot", load_tasks_frame("ml-100k", str(data)), 0, cfg)


def _read(block):
    return {f.name for f in block.inputs_layer.features}


def test_history_and_item_aware_options_choose_what_the_blocks_read(tiny_split):
    from limaml_eval.models import build

    cfg, split = tiny_split
    plain = build("limaml", split.spec, cfg)
    assert {"hist_pos_rate", "gender"} <= _read(plain.meta_block) and "movie_id" not in _read(plain.meta_block)
    assert {"genre_affinity", "hist_pos_rate", "movie_id"} <= _read(plain.global_block)
    # the control: no block reads anything computed from the user's past labels
    for block in (lambda m: m.meta_block, lambda m: m.global_block):
        read = _read(block(build("vanilla", split.spec, cfg, history=False)))
        assert not any(n.startswith("hist_") or n == "genre_affinity" for n in read)
    item = build("limaml", split.spec, cfg, item_aware=True)
    assert {"movie_id", "genres", "release_year", "genre_affinity", "hist_pos_rate"} <= _read(item.meta_block)
    assert _read(item.global_block) == _read(plain.global_block)


def test_warm_start_trains_the_blocks_as_a_plain_model_within_the_budget(tiny_split, monkeypatch):
    import numpy as np

    from limaml_eval import runner

    cfg, split = tiny_split
    fitted, real_fit = [], runner.fit

    class Trained(Exception):
        pass

    def fit(model, *args, epochs=None, **kwargs):
        fitted.append((type(model).__name__, epochs))
        if type(model).__name__ != "VanillaModel":
            raise Trained(model)  # the meta-training itself is not needed here
        real_fit(model, *args, epochs=epochs, **kwargs)
        fitted.append([w.copy() for w in model.meta_block.get_weights() + model.global_block.get_weights()])

    monkeypatch.setattr(runner, "fit", fit)
    with pytest.raises(Trained) as stopped:
        runner._train_and_tune(parse_variant("W=limaml:warm_start=1,mixed_loss_weight=1.0"), split, cfg, 0, 0,
                               lambda *_: None)
    model = stopped.value.args[0]
    assert fitted[0] == ("VanillaModel", 1) and fitted[2] == ("LiMAMLModel", 2)  # 1 + 2 = the 3-epoch budget
    for copied, trained in zip(model.meta_block.get_weights() + model.global_block.get_weights(), fitted[1]):
        np.testing.assert_array_equal(copied, trained)
    with pytest.raises(ValueError, match="warm_start=3 needs"):
        runner._train_and_tune(parse_variant("W=limaml:warm_start=3"), split, cfg, 0, 0, lambda *_: None)


def test_compare_variants_on_validation_users_only(tmp_path):
    from limaml_cli import main

    dirs = []
    for name, val in (("a", {"LiMAML+FT": 0.66}), ("b", {"LiMAML+FT": 0.62})):
        runs = []
        for seed in (0, 1):
            run = _fake_run(seed, 0.70, 0.99)  # test numbers must not matter
            chosen = run["chosen"]["K=5"]
            row = {"a": "mixed+FT", "b": "item+FT"}[name]
            chosen[row] = dict(chosen.pop("LiMAML+FT"), row=row, val_auc=val["LiMAML+FT"] + 0.01 * seed)
            runs.append(run)
        d = tmp_path / name
        d.mkdir()
        (d / "results.json").write_text(json.dumps({"protocol": "few-shot", "config": {"protocol": "few-shot"},
                                                    "runs": runs}))
        dirs.append(str(d))
    assert main(["reproduce", "--compare", *dirs, "--out", str(tmp_path / "cmp")]) == 0
    text = (tmp_path / "cmp" / "validation.md").read_text()
    # best baseline on validation: vanilla+FT at 0.65 in every seed
    assert _row(text, "mixed+FT")[1:] == ["0.6650 ± 0.0071", "+0.0150 ± 0.0071", "2/2"]
    assert _row(text, "item+FT")[1:] == ["0.6250 ± 0.0071", "-0.0250 ± 0.0071", "0/2"]
    assert text.index("| mixed+FT |") < text.index("| vanilla+FT |") < text.index("| item+FT |")


def test_dot_option_adds_an_exact_user_x_item_term(tiny_split):
    import numpy as np
    import tensorflow as tf

    from limaml_tf.blocks import FEATURES_PART, MLPGlobalBlock
    from limaml_eval.models import DotMLPGlobalBlock, build
    from limaml_tf.spec import Feature

    cfg, split = tiny_split
    glob = build("vanilla", split.spec, cfg, dot=True).global_block
    assert isinstance(glob, DotMLPGlobalBlock) and _read(glob) == _read(build("vanilla", split.spec, cfg).global_block)
    assert {f.name for f in glob.item_inputs.features} == {"movie_id", "genres", "release_year"}

    block = DotMLPGlobalBlock((Feature("age", "numeric"),), (Feature("item", "categorical", num_bins=10),),
                              item_dim=4, hidden_units=(8,))
    x = {"age": tf.constant([0.5, -1.0, 0.2]), "item": tf.constant([1, 2, 3]), "meta_embedding": tf.random.normal([3, 4])}
    out = block(x)
    part = block.features_part(x)  # what the inner loop computes once per task batch
    np.testing.assert_allclose(block({**x, FEATURES_PART: part}), out, rtol=1e-6)
    item = block.item_tower(block.item_inputs(x))
    mlp = MLPGlobalBlock.call(block, {**x, FEATURES_PART: part[:, :-4]})
    np.testing.assert_allclose(out - mlp, tf.reduce_sum(x["meta_embedding"] * item, -1, keepdims=True), atol=1e-6)
    clone = DotMLPGlobalBlock.from_config(block.get_config())
    clone(x)
    clone.set_weights(block.get_weights())
    np.testing.assert_allclose(clone(x), out, rtol=1e-6)
