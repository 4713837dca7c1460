"""`limaml refresh`: the Beam meta-embedding refresh (`beam_pipelines.refresh_embeddings`) into Feast."""

from __future__ import annotations

import argparse

EXAMPLES = """
limaml refresh --input interactions/ --adapter saved_models/limaml_adapter --output runs/embeddings \\
    --as-of 2026-11-23T00:00:00Z --days 30
limaml refresh ... -- --runner=DaskRunner --dask_client_address=HOST:8786
"""


def add_parser(sub):
    from beam_pipelines.refresh_embeddings import add_arguments
    from limaml_cli import add_command

    p = add_command(sub, "refresh", "Beam refresh of meta embeddings (Algorithm 2b) into Feast", EXAMPLES,
                    description="Beam refresh of meta embeddings (Algorithm 2b) into Feast. Beam pipeline options "
                                "go after `--`.")
    add_arguments(p)
    p.add_argument("beam_args", nargs=argparse.REMAINDER, help="-- then Beam pipeline options")
    p.set_defaults(func=run)


def run(args) -> int:
    from beam_pipelines.refresh_embeddings import run_from_args

    run_from_args(args, [a for a in args.beam_args if a != "--"])
    return 0
