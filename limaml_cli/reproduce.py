"""`limaml reproduce`: the field's protocols and the paper's tables on MovieLens.

    limaml reproduce --protocol few-shot --support-size 5 10 20 --data-path ../shared/data/ml-100k
    limaml reproduce --protocol user-cold --data-path ../shared/data/ml-100k
    limaml reproduce --protocol time --data-path ../shared/data/ml-100k           # models table + Tables 3/4/9/14
    limaml reproduce --protocol few-shot --sensitivity 10 12 13 --models vanilla  # Tables 10/12/13 only
    limaml reproduce --merge runs/s0 runs/s1 --out runs/all                        # one report from per-seed runs
    limaml reproduce --compare runs/a/seed0 runs/b/seed0 --out runs/variants       # variants on validation users
"""

from __future__ import annotations

import argparse
import json
import os
import shlex

from limaml_eval.protocols import PROTOCOLS

PAPER_TABLES = ("3", "4", "9", "14")


def _add_protocol_args(p):
    p.add_argument("--protocol", choices=PROTOCOLS, default="time",
                   help="time: the paper's global time split (default); few-shot: first K ratings of unseen "
                        "users; user-cold: MeLU's users with 13-100 ratings, 10 random query ratings")
    p.add_argument("--support-size", "--support-sizes", dest="support_sizes", type=int, nargs="+", metavar="K",
                   help="few-shot: support sizes K (several: one table each and the AUC-vs-K plot; default 5 10 20)")
    p.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m"])
    p.add_argument("--data-path", default=None,
                   help="directory of the unzipped official archive (default: download it, if the network allows)")
    p.add_argument("--out", default=None, help="output directory (default: runs/reproduce-<protocol>)")
    p.add_argument("--quick", action="store_true", help="small settings that finish in minutes on 2 cores")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--tables", nargs="+", choices=["models", *PAPER_TABLES],
                   help="models: every model x metric with settings chosen on validation users (every protocol); "
                        "3 4 9 14: the paper's tables with fixed settings (time protocol only). Default: models, "
                        "plus 3 4 9 14 for --protocol time")
    p.add_argument("--sensitivity", nargs="+", choices=["10", "12", "13"],
                   help="the paper's sensitivity tables on the validation users: 10 dropout, 12 α, 13 β")


def _add_model_args(p):
    p.add_argument("--models", nargs="+", help="rows of the models table (default: vanilla W&D-ID MAML LiMAML LiMAML-ID)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=KIND[:key=value,...]",
                   help="an extra model, e.g. LiMAML-mixed=limaml:mixed_loss_weight=0.5 (a trailing ! on NAME "
                        "makes it a baseline); KIND: vanilla, wd_id, maml, limaml, limaml_id")
    p.add_argument("--epochs", type=int, help="epochs budget (the epoch is chosen on validation)")
    p.add_argument("--learning-rate", type=float, help="β (Adam)")
    p.add_argument("--inner-learning-rate", type=float, help="α")
    p.add_argument("--tasks-per-batch", type=int)
    p.add_argument("--train-episodes", choices=["recent", "first-k"],
                   help="few-shot training tasks: recent (default: a user's most recent ratings, 75 %% support) or "
                        "first-k (like the evaluation: first k ratings, k drawn from --support-size, then the next)")
    p.add_argument("--validation-only", action="store_true",
                   help="explore: choose and score on validation users only, never touch the test users "
                        "(writes results.json and validation.md, no report.md)")
    p.add_argument("--train-user-fraction", type=float,
                   help="train on this share of the training users (validation and test users unchanged)")
    p.add_argument("--support-dropout", type=float,
                   help="fraction of training tasks trained without adaptation (cold-start path)")
    p.add_argument("--ft-steps", type=int, nargs="+", help="fine-tune steps candidates (validation-chosen)")
    p.add_argument("--ft-learning-rates", type=float, nargs="+", help="fine-tune learning rate candidates")
    p.add_argument("--tune-every", type=int, help="snapshot candidate every this many epochs")


def _add_paper_args(p):
    p.add_argument("--warm-start-epochs", type=int,
                   help="paper tables: MAML/LiMAML start from the trained vanilla weights, then meta-train this "
                        "many epochs")
    p.add_argument("--table9-epochs", type=int, help="paper tables: epochs of the Table 9 models")
    p.add_argument("--support-period", choices=["validation", "history"],
                   help="paper tables: what fine-tuning adapts on: the validation period (paper) or all pre-test "
                        "samples")
    p.add_argument("--tuning", action="store_true",
                   help="paper tables: score inside the training period only (never touches the test period)")
    p.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity (2: a line per epoch, 0: none)")
    p.add_argument("--merge", nargs="+", metavar="DIR",
                   help="no training: one report from the results.json of runs made separately (e.g. per seed)")
    p.add_argument("--compare", nargs="+", metavar="DIR",
                   help="no training: validation-users table of every variant of runs of one protocol that "
                        "trained different variants (validation.md in --out)")


EXAMPLES = """
limaml reproduce --protocol few-shot --support-size 5 10 20 --data-path ../shared/data/ml-100k --quick
limaml reproduce --protocol time --data-path ../shared/data/ml-100k --tables models 3 4
"""


def add_parser(sub):
    """The subcommand, with the examples every `limaml` command shows in --help; usage errors are one
    line (its parser class is the CLI's)."""
    p = sub.add_parser("reproduce", help="the field's protocols and the paper's tables on MovieLens",
                       description=__doc__.splitlines()[0],
                       epilog="example:\n" + "\n".join(f"  {line}" for line in EXAMPLES.strip().splitlines()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_protocol_args(p)
    _add_model_args(p)
    _add_paper_args(p)
    p.set_defaults(func=main, reproduce_parser=p)
    return p


def command_line(a) -> str:
    """The command that reproduces `a`: `limaml reproduce` with every option that differs from its default."""
    parser = a.reproduce_parser
    defaults = vars(parser.parse_args([]))
    parts = ["limaml", "reproduce"]
    for action in parser._actions:
        value = getattr(a, action.dest, None)
        if not action.option_strings or action.dest == "help" or value == defaults.get(action.dest):
            continue
        flag = action.option_strings[0]
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [flag] + [shlex.quote(str(v)) for v in value] if action.nargs else \
                [x for v in value for x in (flag, shlex.quote(str(v)))]
        elif value is not None and value is not False:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


def _given(pairs: dict) -> dict:
    return {k: v for k, v in pairs.items() if v is not None}


def _tuple(v):
    return tuple(v) if v else None


def generic_config(a):
    from limaml_eval.runner import Config

    overrides = _given({
        "protocol": a.protocol, "dataset": a.dataset, "data_path": a.data_path, "seeds": _tuple(a.seeds),
        "support_sizes": _tuple(a.support_sizes), "models": _tuple(a.models), "variants": _tuple(a.variant),
        "epochs": a.epochs, "learning_rate": a.learning_rate, "inner_learning_rate": a.inner_learning_rate,
        "tasks_per_batch": a.tasks_per_batch, "support_dropout": a.support_dropout,
        "train_episodes": a.train_episodes, "train_user_fraction": a.train_user_fraction,
        "validation_only": a.validation_only or None,
        "ft_steps": _tuple(a.ft_steps), "ft_learning_rates": _tuple(a.ft_learning_rates),
        "tune_every": a.tune_every, "sensitivity": _tuple(a.sensitivity)})
    return Config.quick(**overrides) if a.quick else Config(**overrides)


def paper_config(a, tables):
    from limaml_eval.paper import Config

    overrides = _given({
        "dataset": a.dataset, "data_path": a.data_path, "tuning": a.tuning or None, "seeds": _tuple(a.seeds),
        "epochs": a.epochs, "inner_learning_rate": a.inner_learning_rate, "learning_rate": a.learning_rate,
        "tasks_per_batch": a.tasks_per_batch, "table9_epochs": a.table9_epochs, "support_period": a.support_period,
        "support_dropout": a.support_dropout, "warm_start_epochs": a.warm_start_epochs, "tables": tuple(tables)})
    return Config.quick(**overrides) if a.quick else Config(**overrides)


def _merge(a, command) -> int:
    out = a.out or "runs/reproduce-merged"
    with open(os.path.join(a.merge[0], "results.json")) as f:
        generic = "protocol" in json.load(f)
    if generic:
        from limaml_eval.runner import merge
        merge(a.merge, out, command)
    else:
        from limaml_eval.paper_tables import merge
        paper = tuple(t for t in (a.tables or ()) if t != "models")
        merge(a.merge, out, command, paper or None)
    print(f"[report] {os.path.join(out, 'report.md')}")
    return 0


def main(a) -> int:
    command = command_line(a)
    if a.merge:
        return _merge(a, command)
    if a.compare:
        from limaml_eval.candidates import write

        print(f"[report] {write(a.compare, a.out or 'runs/reproduce-compare', command)}")
        return 0
    default = ("models", *PAPER_TABLES) if a.protocol == "time" else ("models",)
    tables = tuple(a.tables or default)
    paper = tuple(t for t in tables if t in PAPER_TABLES)
    if paper and a.protocol != "time":
        raise ValueError(f"--tables {' '.join(paper)}: the paper's tables use the time protocol; with "
                         f"--protocol {a.protocol} only 'models' (and --sensitivity) apply")
    out = a.out or f"runs/reproduce-{a.protocol}"
    verbose = a.verbose
    if "models" in tables or a.sensitivity:
        from limaml_eval.runner import run

        cfg = generic_config(a)
        if "models" not in tables:  # sensitivity only: the vanilla reference is trained there
            cfg = type(cfg)(**{**cfg.__dict__, "models": ()})
        run(cfg, out, command=command, verbose=verbose)
    if paper:
        from limaml_eval.paper_tables import reproduce

        shared = "models" in tables or a.sensitivity  # the protocol report owns `out`
        reproduce(paper_config(a, paper), os.path.join(out, "paper_tables") if shared else out,
                  command=command, verbose=verbose)
    return 0
