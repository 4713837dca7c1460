"""limaml-tf: personalize deep recommender models with meta learning (LiMAML, KDD 2024).

`import limaml_tf` is cheap and has no side effects: it sets no environment variable (Keras 3's
default backend is TensorFlow) and imports neither Keras nor TensorFlow nor any submodule until a
public name is used (`limaml_tf.LiMAMLModel`, `from limaml_tf import make_synthetic`, ...), and
then only the module that defines it. The Keras-free parts (`limaml_tf.spec`, `limaml_tf.artifacts`,
`limaml_tf.tasks`) can so be imported by Beam workers and the serving client without loading the
model code.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# The public names are the top-level classes and functions decorated with `@limaml_export`
# (limaml_tf/api_export.py) in the package's modules. The first look-up of a name that is not
# defined here reads the package's source for the decorator (a text filter, then `ast` on the few
# files that use it) instead of importing the modules: `import limaml_tf` and `dir(limaml_tf)` stay
# free of Keras, TensorFlow and every submodule, and a name imports only its own module.
_DECORATOR = "limaml_export"  # limaml_tf.api_export.limaml_export (not imported: the scan imports nothing)
_public: dict[str, str] | None = None  # public name -> module that defines it, once scanned


def _scan() -> dict[str, str]:
    """{name: module} of the top-level definitions decorated with `@limaml_export` in the package."""
    import ast
    import os

    root, found = os.path.dirname(os.path.abspath(__file__)), {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        for file in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, file)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if "@" + _DECORATOR not in text:
                continue
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            module = ".".join([__name__, *(parts[:-1] if parts[-1] == "__init__" else parts)])
            for node in ast.parse(text, path).body:
                decorators = getattr(node, "decorator_list", ())
                if not any((d.id if isinstance(d, ast.Name) else getattr(d, "attr", None)) == _DECORATOR
                           for d in decorators):
                    continue
                if found.setdefault(node.name, module) != module:
                    raise ImportError(f"{__name__}.{node.name} is exported by both {found[node.name]} and {module}")
    return found


def _public_names() -> dict[str, str]:
    global _public
    if _public is None:
        _public = _scan()
    return _public


def __getattr__(name: str):
    if name == "__all__":
        globals()["__all__"] = names = sorted(_public_names())
        return names
    module = None if name.startswith("__") else _public_names().get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_public_names()))
