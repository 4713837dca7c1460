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
    parser.add_argument("--traceback", action="store_true",
                        help="show the Python traceback of an error (also: LIMAML_TRACEBACK=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv=None) -> int:
    """Runs a command. A usage error exits 2 (argparse); an error of the input, an argument or a file
    (ValueError, incl. FeatureError, and OSError, incl. FileNotFoundError) prints one line
    `limaml <command>: error: <message>` on stderr and exits 1; --traceback / LIMAML_TRACEBACK=1 re-raise it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the application's choice (before TensorFlow loads)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:
        if args.traceback or os.environ.get("LIMAML_TRACEBACK", "") not in ("", "0"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__  # one line
        print(f"limaml {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"limaml {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
