"""Renders committed reports again from their results.json, without training: report.md and the plots
are replaced, results.json is left as it is. For a change of how reports print (e.g. the one "mean ± std").

    python scripts/render_reports.py docs/reproduce_ml100k docs/protocols_ml100k/few-shot ...
    python scripts/render_reports.py --all          # every docs/**/results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import shutil
import tempfile


def _config(cls, config: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in names})


def render(directory: str) -> None:
    with open(os.path.join(directory, "results.json")) as f:
        results = json.load(f)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        if "protocol" in results:  # the protocols' report (limaml_eval.report)
            from limaml_eval.report import write_report
            from limaml_eval.runner import Config

            write_report(results["runs"], _config(Config, results["config"]), out, results.get("commands", []))
        else:  # the paper's tables (limaml_eval.paper_report)
            from limaml_eval.paper import Config
            from limaml_eval.paper_report import write_report

            write_report(results["runs"], _config(Config, results["config"]), results["data"], out,
                         results.get("commands", []))
        for name in os.listdir(out):
            if name not in ("results.json", "report.md"):
                shutil.copyfile(os.path.join(out, name), os.path.join(directory, name))
        with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
            new = f.read().splitlines()
        with open(os.path.join(directory, "report.md"), encoding="utf-8") as f:
            old = [line for line in f.read().splitlines() if line.startswith("Settings: ")]
        # the settings line as the run printed it: options added since then would show their defaults
        settings = iter(old)
        new = [next(settings, line) if line.startswith("Settings: ") else line for line in new]
        with open(os.path.join(directory, "report.md"), "w", encoding="utf-8") as f:
            f.write("\n".join(new) + "\n")
    print(f"[report] {os.path.join(directory, 'report.md')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*")
    parser.add_argument("--all", action="store_true")
    args = parser.parse_args()
    dirs = args.dirs + ([os.path.dirname(p) for p in sorted(glob.glob("docs/**/results.json", recursive=True))]
                        if args.all else [])
    for d in dirs:
        render(d)


if __name__ == "__main__":
    main()
