"""`limaml` command line. Each subcommand lives in its own module with `add_parser(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys

# module path -> registers one or more subcommands
COMMAND_MODULES = [
    "limaml_tf.demo",
    "limaml_tf.serving.server",
    "limaml_tf.refresh",
    "limaml_tf.reproduce",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="limaml", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
