"""Checks of arguments and saved artifacts shared by the model, the tasks, the pipelines and the commands:
each returns the checked value or raises an error that names the argument and the fix. No Keras, no
TensorFlow."""

from __future__ import annotations

import math

import numpy as np

from limaml_tf import __version__
from limaml_tf.spec import ArtifactError


def positive_int(name: str, value, allow_none: bool = False):
    """`value` as an int >= 1 (or None when allowed); ValueError naming `name` otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1{' or None (no limit)' if allow_none else ''}, "
                         f"got {value!r}: pass a positive count")
    return int(value)


def non_negative_int(name, value) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def non_negative_number(name, value) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def check_saved_version(saved: str | None, what: str) -> None:
    """A model saved by another minor version of the package may not load the same way: refuse it.
    (Files saved before the version was recorded carry none and load as before.)"""
    if saved is not None and saved.split(".")[:2] != __version__.split(".")[:2]:
        raise ArtifactError(f"this {what} was saved by limaml-tf {saved}, this is limaml-tf {__version__}: "
                            f"load it with limaml-tf=={saved} (pip install 'limaml-tf=={saved}'), or re-train it "
                            "with this version")
