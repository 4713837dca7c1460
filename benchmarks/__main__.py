"""Runs every benchmark module of this package (each `benchmarks/<name>.py` with a `main()`), in name order.

    python -m benchmarks                    # all
    python -m benchmarks training_speed     # only these
"""

import importlib
import pkgutil
import sys
import time

import benchmarks


def discover():
    for info in sorted(pkgutil.iter_modules(benchmarks.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"benchmarks.{info.name}")
        if callable(getattr(module, "main", None)):
            yield info.name, module.main


def run(names=None) -> int:
    failed = []
    for name, main in discover():
        if names and name not in names:
            continue
        print(f"\n=== benchmarks.{name} ===", flush=True)
        start = time.perf_counter()
        try:
            main([]) if main.__code__.co_argcount else main()
        except Exception as e:  # report and go on with the other benchmarks
            failed.append(name)
            print(f"benchmarks.{name} failed: {type(e).__name__}: {e}", flush=True)
        print(f"=== benchmarks.{name}: {time.perf_counter() - start:.0f} s ===", flush=True)
    if failed:
        print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
