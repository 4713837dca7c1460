"""`limaml_export`: the decorator that makes a name public (`limaml_tf.<Name>`).

Put it on a class or function at its definition, in a module of the package:

    @limaml_export
    class MLPMetaBlock(keras.layers.Layer): ...

It registers a Keras object for serialization under "limaml_tf>Name" (so a saved `.keras` file
names it and `keras.saving.load_model` finds it) and returns the object unchanged. Anything else
(a dataclass, an exception, a function) is only exported.

`limaml_tf/__init__.py` finds which module defines a public name by reading the package's source
for `@limaml_export` on a top-level class or function (so write it as is, not under another name),
without importing any module. Keras-free modules (`limaml_tf.spec`, `limaml_tf.tasks`, ...) use the
decorator too, so this module imports nothing: Keras is imported here only for a class that derives
from a Keras class, i.e. once its module has imported Keras.
"""

from __future__ import annotations

import sys

PACKAGE = "limaml_tf"  # Keras serialization package: the registered name is "limaml_tf>Name"


def _is_keras_class(obj) -> bool:
    if not isinstance(obj, type) or "keras" not in sys.modules:
        return False
    return any(base.__module__.split(".")[0] == "keras" for base in obj.__mro__[1:])


_exported: dict[str, str] = {}  # public name -> defining module, of the modules imported so far


def limaml_export(obj):
    """Exports `obj` as `limaml_tf.<obj.__name__>`; registers it with Keras if it is a Keras class."""
    _exported[obj.__name__] = obj.__module__
    if _is_keras_class(obj):
        import keras

        obj = keras.saving.register_keras_serializable(package=PACKAGE)(obj)
    return obj


def exported() -> dict[str, str]:
    """{public name: module} of the decorated objects whose modules are imported."""
    return dict(_exported)
