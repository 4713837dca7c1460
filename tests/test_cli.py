"""The `limaml` command line: an example in every --help, one-line usage errors (exit 2), library logs
kept out of the terminal (quiet by default), `limaml train` on the MovieLens example config and
`limaml evaluate` (examples/synthetic.yaml is trained, killed, resumed and exported in
tests/test_crash_safety.py)."""

from __future__ import annotations

import json
import os

import pytest

from limaml_tf import config as cf
from limaml_cli import build_parser, main

pytestmark = pytest.mark.heavy  # end-to-end / several processes: `make test`, not `make test-fast`

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def subcommands() -> dict:
    action = next(a for a in build_parser()._actions if a.dest == "command")
    return dict(action.choices)


def test_every_subcommand_help_shows_an_example():
    commands = subcommands()
    assert {"demo", "train", "export", "evaluate", "serve", "refresh", "reproduce"} <= set(commands)
    for name, parser in commands.items():
        text = parser.format_help()
        assert "example:" in text and f"  limaml {name} " in text, name


@pytest.mark.parametrize("argv, flag", [(["train"], "--config"), (["serve", "--port", "x"], "--port"),
                                        (["evaluate", "m.keras"], "--data"), (["nope"], "invalid choice")])
def test_usage_error_is_one_line_and_exit_2(capsys, argv, flag):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert flag in err and "--help" in err


def test_library_logs_go_to_the_log_file(tmp_path, capfd, monkeypatch):
    """What is written to file descriptor 2 (TensorFlow's C++ logs, Beam's workers) goes to the log file;
    the command's own output stays on stdout; --verbose shows the logs."""
    import limaml_cli.serve as serve

    def noisy(args):
        os.write(2, b"I0000 cuda_stub.cc] Could not find cuda drivers\n")
        print("[serve] result")
        return 0

    monkeypatch.setattr(serve, "serve", noisy)
    log = tmp_path / "x.log"
    assert main(["serve", "--log-file", str(log)]) == 0
    out, err = capfd.readouterr()
    assert out == "[serve] result\n" and err == "" and "cuda drivers" in log.read_text()
    assert main(["serve", "--verbose"]) == 0
    assert "cuda drivers" in capfd.readouterr().err


def test_example_configs_load():
    synthetic = cf.load(os.path.join(EXAMPLES, "synthetic.yaml"))
    assert synthetic.data["synthetic"] and cf.FeatureSpec.from_dict(synthetic.features).task_key == "user_id"
    movielens = cf.load(os.path.join(EXAMPLES, "movielens.yaml"), {"data.path": "/data/ml-100k"})
    assert movielens.data == {**movielens.data, "movielens": "ml-100k", "path": "/data/ml-100k"}
    overridden = cf.load(os.path.join(EXAMPLES, "synthetic.yaml"), {"data.path": "x.csv", "training.epochs": 2})
    assert overridden.data["synthetic"] is None and overridden.training["epochs"] == 2


def test_movielens_example_trains_on_a_small_slice(background_runs):
    """`limaml train --config examples/movielens.yaml` on small MovieLens-format files (run by
    tests/background_runs.py): its outputs, a quiet output, no warning from our code paths."""
    top, results, output = background_runs
    assert results["movielens"] == {"train": 0}
    out = top / "movielens"
    assert (out / "model.keras").exists() and len(list((out / "logs").rglob("events.out.tfevents*"))) >= 1
    assert json.loads((out / "metrics.json").read_text())["test_auc"]["no fine-tune"]["all"] > 0
    log = (out / "limaml.log").read_text()  # TensorFlow's own logs went there ...
    assert "shuffle=True" not in log and "copy keyword" not in log  # ... but no warning from our code paths
    ours = [line for line in output.splitlines() if "limaml_movielens" in line]
    assert ours and not any("WARNING" in line or "I0000" in line for line in ours)


def test_evaluate_a_trained_model_on_a_held_out_file(background_runs):
    """`limaml evaluate model.keras --data held_out.csv` (the model of examples/synthetic.yaml, run by
    tests/background_runs.py): AUC with and without per-task fine-tuning."""
    top, results, output = background_runs
    assert results["train"]["evaluate"] == 0
    figures = json.loads((top / "evaluate.json").read_text())["auc"]
    assert set(figures) == {"no fine-tune", "fine-tune (1 step)"}
    assert all(0 < f["all"] < 1 for f in figures.values())
    assert "[evaluate] held_out.csv AUC" in output


def _two_definitions_config(tmp_path, **model):
    import yaml

    with open(os.path.join(EXAMPLES, "two_definitions.yaml")) as f:
        config = yaml.safe_load(f)
    config["data"]["synthetic"].update(num_tasks=40, mean_samples_per_task=40)
    config["training"].update(epochs=1, backup=False, max_samples_per_task=32, eval_max_samples_per_task=16)
    config["model"].update(model)
    config["output"] = {"dir": str(tmp_path / "run"), "saved_models": str(tmp_path / "saved_models"),
                        "model_name": "two", "export": True}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_train_with_two_task_definitions_from_yaml(tmp_path, capsys):
    """examples/two_definitions.yaml (shrunk): one meta block per definition of features.task_keys, built
    from the config, trained and evaluated (the export of one adapter per definition is
    tests/test_task_definitions_serving.py's)."""
    from limaml_tf.training import load_model

    assert main(["train", "--config", _two_definitions_config(tmp_path), "--no-export"]) == 0
    model = load_model(str(tmp_path / "run" / "model.keras"))
    assert model.meta_block.names == ["user", "user_x_type"]
    features = [f.name for f in model.meta_block.blocks["user_x_type"].inputs_layer.features]
    assert features == ["segment", "activity", "item_type"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["test_auc"]
    assert 0 < metrics["fine-tune (1 step)"]["all"] < 1
    assert "[evaluate] test AUC" in capsys.readouterr().out


def test_meta_blocks_must_match_the_task_definitions(tmp_path):
    path = _two_definitions_config(tmp_path, meta_block={"user": {"type": "mlp"}, "genre": {"type": "mlp"}})
    c = cf.load(path)
    spec = cf.FeatureSpec.from_dict(c.features)
    with pytest.raises(cf.ConfigError, match=r"model\.meta_block has blocks for \['genre', 'user'\].*task_keys"):
        cf.build_meta_block(c, spec)
    bad_type = _two_definitions_config(tmp_path, meta_block={"user": {"type": "mlp"}, "user_x_type": {"type": "x"}})
    with pytest.raises(cf.ConfigError, match=r"model\.meta_block\.user_x_type\.type is 'x'"):
        cf.load(bad_type)
