"""`limaml reproduce` (registered by the `limaml_tf.cli` package): the field's protocols (time,
few-shot, user-cold) and the paper's tables on MovieLens. The implementation is in
`limaml_tf.experiments.command`, importable whether `limaml_tf.cli` is a module or a package."""

from limaml_tf.experiments.command import add_parser, main  # noqa: F401

__all__ = ["add_parser", "main"]
