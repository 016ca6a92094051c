"""Load a finished run's tables into tidy pandas frames, with one-line errors for missing files.

Every Parquet and JSON input goes through `bigram_subnetworks.io`, so a missing or damaged file
stops the report with one line that names it. Snakemake benchmark files are optional: a stage
without one is shown as "not measured".
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bigram_subnetworks.config import Config
from bigram_subnetworks.io import read_json, read_parquet

log = logging.getLogger(__name__)

# Columns each table must have (the analysis stages' schemas; extra columns are ignored).
TABLE_COLUMNS: dict[str, list[str]] = {
    "masks": ["model", "target", "lambda", "lambda_value", "metric", "value"],
    "blocks": ["model", "target", "lambda", "layer", "kind", "head", "kept", "size", "fraction"],
    "overlap": [
        "model",
        "bigram_lambda",
        "optimal_lambda",
        "selected",
        "observed",
        "expected",
        "ratio",
        "p_value",
        "share_a_in_b",
        "kept_a",
        "kept_b",
        "draws",
    ],
    "overlap_null": ["model", "draw", "overlap"],
    "ablations": [
        "model",
        "condition",
        "kept_fraction",
        "mean_surprisal_bits",
        "sd_surprisal_bits",
    ],
    "generations": ["model", "condition", "prompt", "decoding", "text"],
    "residual": ["model", "condition", "metric", "layer", "layer_b", "value"],
}
# Written only when the config has a checkpoints section.
CHECKPOINT_COLUMNS: dict[str, list[str]] = {
    "checkpoints": [
        "model",
        "step",
        "target",
        "lambda",
        "lambda_value",
        "budget",
        "metric",
        "value",
    ],
    "controls": ["model", "control", "lambda", "metric", "value"],
}
HISTORY_SERIES = ("loss", "penalty", "kept", "undecided", "temperature")

# Pipeline stages in DAG order (Snakemake rule names), for the cost table.
DATA_STAGES = ("corpus", "tokenizer", "tokenize", "bigram_stats")
RUN_STAGES = ("pretrain", "train_mask", "evaluate", "select", "overlap", "ablate", "residual")
CHECKPOINT_STAGES = ("checkpoint_masks", "checkpoints", "controls")


@dataclass(frozen=True)
class RunTables:
    """Everything the report reads from one run, as tidy frames (None: not configured)."""

    models: list[str]
    masks: pd.DataFrame
    blocks: pd.DataFrame
    overlap: pd.DataFrame
    overlap_null: pd.DataFrame
    ablations: pd.DataFrame
    generations: pd.DataFrame
    residual: pd.DataFrame
    checkpoints: pd.DataFrame | None
    controls: pd.DataFrame | None
    selection: dict[str, Any]
    model_info: dict[str, dict[str, Any]]
    histories: pd.DataFrame  # model, target, lambda, attempts, step, loss, penalty, kept, ...
    data_info: dict[str, Any]  # bigrams.json and tokens.json of the data folder
    benchmarks: pd.DataFrame  # stage, file, seconds, max_rss_mb

    def metric_table(self) -> pd.DataFrame:
        """`masks` as one row per (model, target, lambda) with one column per metric."""
        return wide_metrics(self.masks, ["model", "target", "lambda", "lambda_value"])


def wide_metrics(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """A tidy (keys…, metric, value) table pivoted to one column per metric."""
    if table.empty:
        return pd.DataFrame(columns=keys)
    grouped = table.groupby([*keys, "metric"], dropna=False, sort=False)["value"].mean()
    wide = grouped.unstack("metric")
    wide.columns.name = None
    return wide.reset_index()


def read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    """A Parquet table as a pandas frame (one-line error when missing, damaged or incomplete)."""
    return read_parquet(path, columns=columns).to_pandas()


def read_histories(cfg: Config, masks_dir: Path) -> pd.DataFrame:
    """Per-step training curves of every configured trained mask (the attempt that was kept)."""
    frames = []
    grids = cfg.lambdas.model_dump() if cfg.lambdas is not None else {}
    for model in cfg.models:
        for target, labels in grids.items():
            for label in labels:
                log_file = masks_dir / model / target / f"lambda-{label}.json"
                attempts = read_json(log_file).get("history") or []
                if not attempts:  # the keep-all / keep-nothing baselines are not trained
                    continue
                last = attempts[-1]
                series = {name: last.get(name, []) for name in HISTORY_SERIES}
                steps = max(len(values) for values in series.values())
                frame = pd.DataFrame(
                    {name: _padded(values, steps) for name, values in series.items()}
                )
                frame.insert(0, "step", range(steps))
                frame.insert(0, "attempts", len(attempts))
                frame.insert(0, "lambda", label)
                frame.insert(0, "target", target)
                frame.insert(0, "model", model)
                frames.append(frame)
    columns = ["model", "target", "lambda", "attempts", "step", *HISTORY_SERIES]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _padded(values: list[float], length: int) -> list[float]:
    return [float(v) for v in values] + [math.nan] * (length - len(values))


def find_benchmark_files(cfg: Config, run_dir: Path, data_dir: Path) -> list[Path]:
    """Snakemake's benchmark files of a run and of its data stages (those that exist)."""
    found = sorted(Path(run_dir, "benchmarks").rglob("*.tsv"))
    data_files = [
        cfg.corpus_dir / "logs" / "corpus.benchmark.tsv",
        cfg.tokenizer_dir / "logs" / "tokenizer.benchmark.tsv",
        Path(data_dir) / "logs" / "tokenize.benchmark.tsv",
        Path(data_dir) / "logs" / "bigram_stats.benchmark.tsv",
    ]
    return [path for path in data_files if path.is_file()] + found


def benchmark_stage(path: Path) -> str:
    """The stage a benchmark file measures: `<stage>.benchmark.tsv`, `benchmarks/<stage>.tsv` or
    `benchmarks/<stage>/<job>.tsv`."""
    if path.name.endswith(".benchmark.tsv"):
        return path.name.removesuffix(".benchmark.tsv")
    parts = path.parts
    if "benchmarks" in parts[:-1]:
        last = len(parts) - 1 - parts[::-1].index("benchmarks")
        return parts[last + 1].removesuffix(".tsv")
    return path.stem


def read_benchmarks(files: list[Path] | None) -> pd.DataFrame:
    """One row per readable benchmark file: stage, file, seconds, max_rss_mb (means over
    Snakemake's repeats). Missing or unreadable files are skipped."""
    rows = []
    for path in files or []:
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                records = list(csv.DictReader(handle, delimiter="\t"))
            seconds = [float(r["s"]) for r in records]
            rss = [_number(r.get("max_rss")) for r in records]
        except (OSError, KeyError, TypeError, ValueError):
            log.warning("%s: not a readable benchmark file; its stage counts as not measured", path)
            continue
        if not seconds:
            continue
        rows.append(
            {
                "stage": benchmark_stage(Path(path)),
                "file": str(path),
                "seconds": sum(seconds) / len(seconds),
                "max_rss_mb": max(rss),
            }
        )
    return pd.DataFrame(rows, columns=["stage", "file", "seconds", "max_rss_mb"])


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "", "-", "NA") else math.nan
    except ValueError:
        return math.nan


def expected_stages(cfg: Config) -> list[str]:
    """The stages a run of this config has, in DAG order."""
    stages = [*DATA_STAGES, *RUN_STAGES]
    if cfg.checkpoints is not None:
        stages += CHECKPOINT_STAGES
    return stages


def stage_costs(cfg: Config, benchmarks: pd.DataFrame) -> pd.DataFrame:
    """Wall-clock seconds per stage (sum over its jobs), jobs measured and peak memory; stages
    without a benchmark file have NaN seconds. Stages measured but not expected come last."""
    stages = expected_stages(cfg)
    stages += sorted(set(benchmarks["stage"]) - set(stages))
    rows = []
    for stage in stages:
        measured = benchmarks[benchmarks["stage"] == stage]
        rows.append(
            {
                "stage": stage,
                "jobs": len(measured),
                "seconds": float(measured["seconds"].sum()) if len(measured) else math.nan,
                "max_rss_mb": float(measured["max_rss_mb"].max()) if len(measured) else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=["stage", "jobs", "seconds", "max_rss_mb"])


def load_run(
    cfg: Config, run_dir: Path, data_dir: Path, benchmark_files: list[Path] | None = None
) -> RunTables:
    """Read every table of a finished run (see the module docstring for what may be missing)."""
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    metrics_dir = run_dir / "metrics"
    tables = {
        name: read_table(metrics_dir / f"{name}.parquet", columns)
        for name, columns in TABLE_COLUMNS.items()
    }
    optional: dict[str, pd.DataFrame | None] = dict.fromkeys(CHECKPOINT_COLUMNS)
    if cfg.checkpoints is not None:
        optional = {
            name: read_table(metrics_dir / f"{name}.parquet", columns)
            for name, columns in CHECKPOINT_COLUMNS.items()
        }
    models = list(cfg.models)
    return RunTables(
        models=models,
        **tables,
        **optional,
        selection=read_json(run_dir / "selection.json"),
        model_info={m: read_json(run_dir / "models" / m / "model.json") for m in models},
        histories=read_histories(cfg, run_dir / "masks"),
        data_info={
            "bigrams": read_json(data_dir / "bigrams.json"),
            "tokens": read_json(data_dir / "tokens.json"),
        },
        benchmarks=read_benchmarks(benchmark_files),
    )
