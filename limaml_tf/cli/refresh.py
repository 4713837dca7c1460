"""`limaml refresh`: the Beam meta-embedding refresh (`beam_pipelines.refresh_embeddings`) into Feast."""

from __future__ import annotations

import argparse


def add_parser(sub):
    from beam_pipelines.refresh_embeddings import add_arguments

    p = sub.add_parser("refresh", help="Beam refresh of meta embeddings (Algorithm 2b) into Feast",
                       description="Beam refresh of meta embeddings. Beam pipeline options go after `--`, "
                                   "e.g. `-- --runner=DaskRunner --dask_client_address=HOST:8786`.")
    add_arguments(p)
    p.add_argument("beam_args", nargs=argparse.REMAINDER, help="-- then Beam pipeline options")
    p.set_defaults(func=run)


def run(args) -> int:
    from beam_pipelines.refresh_embeddings import run_from_args

    run_from_args(args, [a for a in args.beam_args if a != "--"])
    return 0
