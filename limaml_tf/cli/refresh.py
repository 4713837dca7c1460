"""`limaml refresh`: the Beam meta-embedding refresh (beam_pipelines/refresh_embeddings.py), and the
demo's refresh step (export the adapter, refresh into the embedded Feast store, read one row back)."""

from __future__ import annotations

import argparse
import os

import numpy as np


def refresh_step(workdir: str, model, interactions, days: float = 30.0, max_samples: int = 64,
                 workers: int = 2) -> dict:
    """Exports `model`'s adapter into `workdir`, runs the refresh (local FnApiRunner, `workers`
    processes) over `interactions` (as of just after the last one) into the embedded Feast SQLite
    store under `workdir`, prints the row count and one example; returns the summary."""
    from beam_pipelines.refresh_embeddings import refresh
    from limaml_tf.export import export_adapter
    from limaml_tf.feature_store import EmbeddingStore

    spec = model.spec
    adapter = export_adapter(model, os.path.join(workdir, "saved_models", "adapter"), steps=model.eval_steps,
                             aggregation="latest")
    data_dir = os.path.join(workdir, "interactions")
    os.makedirs(data_dir, exist_ok=True)
    interactions.to_parquet(os.path.join(data_dir, "part-00000.parquet"), index=False)
    as_of = float(interactions[spec.timestamp].max()) + 1.0
    print(f"\n[refresh] Beam (FnApiRunner, {workers} processes): last {days:g} days -> Feast (SQLite)")
    summary = refresh(data_dir, adapter, os.path.join(workdir, "embeddings"), as_of, days=days,
                      max_samples=max_samples, workers=workers)
    store = EmbeddingStore(summary["store_dir"])
    key = str(interactions[spec.task_key].iloc[-1])
    emb, found = store.get_embeddings([key])
    print(f"[refresh] {summary['rows']} rows ({summary['adapted']} adapted, {summary['cold_start']} cold start, "
          f"{summary['dead_letter']} dead-letter rows) in {summary['seconds']:.1f}s -> {summary['store_dir']}")
    print(f"[refresh] {spec.task_key}={key} (found={bool(found[0])}): "
          f"{np.array2string(emb[0], precision=3, max_line_width=120)}")
    return {k: summary[k] for k in ("rows", "adapted", "cold_start", "dead_letter", "run_dir", "store_dir",
                                    "seconds")}


def add_parser(sub):
    from beam_pipelines.refresh_embeddings import add_arguments

    p = sub.add_parser("refresh", help="Beam refresh of meta embeddings (Algorithm 2b) into Feast",
                       description="Beam refresh of meta embeddings. Beam pipeline options go after `--`, "
                                   "e.g. `-- --runner=DaskRunner --dask_client_address=HOST:8786`.")
    add_arguments(p)
    p.add_argument("beam_args", nargs=argparse.REMAINDER, help="-- then Beam pipeline options")

    def run(args):
        from beam_pipelines.refresh_embeddings import run_from_args

        beam_args = [a for a in args.beam_args if a != "--"]
        run_from_args(args, beam_args)
        return 0

    p.set_defaults(func=run)
