"""Benchmark: the report stage's table work on a synthetic run, with its outputs kept for diffing.

    python benchmarks/report_tables.py [--models N] [--repeat R] [--no-figures] [--out DIR]
                                       [--json PATH]

Writes the synthetic run of tests/test_report.py (`write_run`, the paper-like defaults) with its
two models copied N/2 times each (default N = 2, the test's run), then times the report stage's
parts, best of R:

* load: `load_run` (every Parquet and JSON table read into frames),
* findings: `findings` (summaries, checkpoint trajectories, verdicts: the group-bys and pivots),
* document: `build_document` + `render_html` + `render_markdown` + `plot_tables` +
  `headline_metrics` (the wide tables and their text),
* figures: `render_figures` (all of them, best of R // 5; matplotlib dominates; --no-figures
  leaves them out).

With --out, writes what the stage would (index.html, summary.md, metrics.json, the DVC plot CSVs
and the PNGs) to DIR, so two versions of the package (PYTHONPATH=<copy>/src) can be compared byte
for byte on the same run: `diff -r before/ after/`. The run itself goes to a temporary folder.
Imports the project and tests/test_report.py's run writer only.
"""

from __future__ import annotations

import argparse
import copy
import gc
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from bigram_subnetworks.artifacts import REPORT_FIGURES  # noqa: E402
from bigram_subnetworks.config import Config, validate_config  # noqa: E402
from bigram_subnetworks.io import write_json  # noqa: E402
from bigram_subnetworks.report.build import (  # noqa: E402
    build_document,
    findings,
    headline_metrics,
    plot_tables,
)
from bigram_subnetworks.report.figures import FigureData, render_figures  # noqa: E402
from bigram_subnetworks.report.html import render_html, render_markdown  # noqa: E402
from bigram_subnetworks.report.tables import load_run  # noqa: E402
from test_report import RAW_CONFIG, Spec, report_inputs, write_run  # noqa: E402

T = TypeVar("T")


def config(models: int) -> Config:
    """The test's run config with its models copied to `models` models (checkpoints unchanged)."""
    raw = copy.deepcopy(RAW_CONFIG)
    originals = list(raw["models"].items())
    raw["models"] = {
        f"{name}-{i}" if i else name: dict(model)
        for i in range(max(1, models // len(originals)))
        for name, model in originals
    }
    return validate_config(raw)


def best_of(repeat: int, work: Callable[[], T]) -> tuple[float, T]:
    """The fastest of `repeat` runs of `work` (seconds, garbage collector off) and its result."""
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
        gc.enable()
    return min(times), result  # type: ignore[return-value]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cfg = config(args.models)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_run(root, cfg, Spec())
        inputs = report_inputs(cfg, root)
        seconds: dict[str, float] = {}
        seconds["load"], tables = best_of(args.repeat, lambda: load_run(cfg, inputs))
        seconds["findings"], (models, checkpoints, found) = best_of(
            args.repeat, lambda: findings(tables)
        )

        def document() -> dict[str, Any]:
            doc = build_document(cfg, tables, models, checkpoints, found, {})
            return {
                "index.html": render_html(doc),
                "summary.md": render_markdown(doc),
                "plots": plot_tables(tables),
                "metrics": headline_metrics(models, checkpoints, found),
            }

        seconds["document"], texts = best_of(args.repeat, document)
        data = FigureData(tables, models, checkpoints)
        pngs: dict[str, bytes] = {}
        if not args.no_figures:
            seconds["figures"], pngs = best_of(
                max(1, args.repeat // 5), lambda: render_figures(list(REPORT_FIGURES), data)
            )
    seconds["tables total"] = seconds["load"] + seconds["findings"] + seconds["document"]
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for name in ("index.html", "summary.md"):
            (args.out / name).write_text(texts[name], encoding="utf-8")
        for name, text in texts["plots"].items():
            (args.out / f"{name}.csv").write_text(text, encoding="utf-8")
        write_json(texts["metrics"], args.out / "metrics.json")
        for name, png in pngs.items():
            (args.out / f"{name}.png").write_bytes(png)
    print(f"report stage parts, {len(cfg.models)} models, best of {args.repeat}:")
    for part, value in seconds.items():
        print(f"  {part:<13} {value * 1000:9.1f} ms")
    if args.json is not None:
        versions = {"python": platform.python_version()}
        for package in ("pandas", "polars", "pyarrow"):
            try:
                versions[package] = __import__(package).__version__
            except ImportError:
                versions[package] = "not installed"
        report = {"models": len(cfg.models), "repeat": args.repeat, "seconds": seconds}
        write_json({**report, "versions": versions}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
