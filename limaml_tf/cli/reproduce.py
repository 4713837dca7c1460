"""`limaml reproduce` (registered by the `limaml_tf.cli` package): the field's protocols (time,
few-shot, user-cold) and the paper's tables on MovieLens. The implementation is in
`limaml_tf.experiments.command`, importable whether `limaml_tf.cli` is a module or a package."""

import argparse

from limaml_tf.experiments.command import add_parser as _add_parser
from limaml_tf.experiments.command import main  # noqa: F401

__all__ = ["add_parser", "main"]

EXAMPLES = """
limaml reproduce --protocol few-shot --support-size 5 10 20 --data-path ../shared/data/ml-100k --quick
limaml reproduce --protocol time --data-path ../shared/data/ml-100k --tables models 3 4
"""


def add_parser(sub):
    """The experiments' parser, with the examples every `limaml` command shows in --help and a
    one-line usage error (its class is the CLI's)."""
    p = _add_parser(sub)
    p.epilog = "example:\n" + "\n".join(f"  {line}" for line in EXAMPLES.strip().splitlines())
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    return p
