"""`limaml` command line. Each command lives in its own module with `add_parser(subparsers)`.

The commands are applications of the library: they may import `limaml_tf` and `beam_pipelines`;
no library module imports them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# module path -> registers one or more subcommands
COMMAND_MODULES = [
    "limaml_tf.cli.demo",
    "limaml_tf.cli.serve",
    "limaml_tf.cli.refresh",
    "limaml_tf.cli.reproduce",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="limaml", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the application's choice (before TensorFlow loads)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
