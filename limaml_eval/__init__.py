"""Experiments on public data: the evaluation protocols of the field and the paper's tables.

* `protocols` — time (paper §6) / few-shot / user-cold splits into a `Split`;
* `metrics` — pooled AUC, mean per-user AUC, nDCG@5/10 within each user's query;
* `models` — the model factory `build(kind, spec, cfg, **options)` and the compared `Variant`s;
* `tuning` — per-epoch snapshots, the fine-tune grid, the choice on validation users;
* `runner` — per seed: train, tune on validation users, score test users once; `run`, `merge`;
* `stats` — paired tests (over seeds; per user within a seed);
* `report` — report.md, results.json, plots; `sensitivity` — the paper's Tables 10, 12, 13;
* `paper_tables` / `paper_report` — the paper's Tables 3, 4, 9, 14 on the time split;
* `command` — the `limaml reproduce` subcommand.
"""

from limaml_eval.protocols import PROTOCOLS, Split, make_split
from limaml_eval.runner import Config, merge, run, run_seed

__all__ = ["PROTOCOLS", "Config", "Split", "make_split", "merge", "run", "run_seed"]
