"""Load a finished run's tables into tidy polars frames, with one-line errors for missing files.

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

import polars as pl

from bigram_subnetworks import artifacts as A
from bigram_subnetworks.config import Config
from bigram_subnetworks.io import read_json, read_parquet
from bigram_subnetworks.stages import stages_for

log = logging.getLogger(__name__)

# The tables a report reads, by the name of the report stage's input (schemas in artifacts.py).
TABLES = {
    "mask_metrics": A.MASK_METRICS,
    "blocks": A.BLOCKS,
    "overlap": A.OVERLAP,
    "overlap_null": A.OVERLAP_NULL,
    "ablations": A.ABLATIONS,
    "generations": A.GENERATIONS,
    "residual": A.RESIDUAL,
}
CHECKPOINT_TABLES = {"checkpoints": A.CHECKPOINTS, "controls": A.CONTROLS}
# Bootstrap replicates of every r (paired comparisons), by the report stage's input name.
REPLICATE_TABLES = {"mask_replicates": A.MASK_REPLICATES}
CHECKPOINT_REPLICATES = {
    "checkpoint_replicates": A.CHECKPOINT_REPLICATES,
    "control_replicates": A.CONTROL_REPLICATES,
}
HISTORY_SERIES = ("loss", "penalty", "kept", "undecided", "temperature")
HISTORY_SCHEMA = {
    "model": pl.String,
    "target": pl.String,
    "lambda": pl.String,
    "attempts": pl.Int64,
    "step": pl.Int64,
    **dict.fromkeys(HISTORY_SERIES, pl.Float64),
}
BENCHMARK_SCHEMA = {
    "stage": pl.String,
    "file": pl.String,
    "seconds": pl.Float64,
    "max_rss_mb": pl.Float64,
}


@dataclass(frozen=True)
class RunTables:
    """Everything the report reads from one run, as tidy frames (None: not configured)."""

    models: list[str]
    mask_metrics: pl.DataFrame
    blocks: pl.DataFrame
    overlap: pl.DataFrame
    overlap_null: pl.DataFrame
    ablations: pl.DataFrame
    generations: pl.DataFrame
    residual: pl.DataFrame
    checkpoints: pl.DataFrame | None
    controls: pl.DataFrame | None
    selection: dict[str, Any]
    model_info: dict[str, dict[str, Any]]
    histories: pl.DataFrame  # model, target, lambda, attempts, step, loss, penalty, kept, ...
    data_info: dict[str, Any]  # bigrams.json and tokens.json of the data folder
    benchmarks: pl.DataFrame  # stage, file, seconds, max_rss_mb
    # every stage's bootstrap replicates in one frame (artifacts.REPLICATES_SCHEMA; None: none)
    replicates: pl.DataFrame | None = None

    def metric_table(self) -> pl.DataFrame:
        """`masks` as one row per (model, target, lambda) with one column per metric."""
        return wide_metrics(self.mask_metrics, ["model", "target", "lambda", "lambda_value"])


def wide_metrics(table: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """A tidy (keys…, metric, value) table pivoted to one column per metric (the mean of a key's
    values, NaN and missing values left out; null where there is none). Rows are ordered by each
    key's order of first appearance, key by key; metric columns by first appearance."""
    if table.is_empty():
        return pl.DataFrame(schema={key: table.schema[key] for key in keys if key in table.schema})
    first_seen = [f"__first_{i}" for i in range(len(keys))]
    ranked = table.with_row_index("__row").with_columns(
        pl.col("__row").min().over(key).alias(rank)
        for key, rank in zip(keys, first_seen, strict=True)
    )
    means = ranked.group_by([*keys, *first_seen, "metric"], maintain_order=True).agg(
        pl.col("value").fill_nan(None).mean()
    )
    wide = means.pivot(on="metric", index=[*keys, *first_seen], values="value")
    return wide.sort(first_seen, maintain_order=True).drop(first_seen)


def read_table(path: Path, artifact: A.Artifact) -> pl.DataFrame:
    """A Parquet table as a polars frame (one-line error when missing, damaged or incomplete)."""
    assert artifact.schema is not None
    frame = pl.from_arrow(read_parquet(path, columns=artifact.schema.names))
    assert isinstance(frame, pl.DataFrame)
    return frame


def read_histories(mask_logs: list[Path]) -> pl.DataFrame:
    """Per-step training curves of the given masks' training logs (the attempt that was kept)."""
    frames = []
    for log_file in mask_logs:
        fields = A.MASK_LOG.parse(str(log_file))
        attempts = read_json(log_file).get("history") or []
        if not attempts:  # the keep-all / keep-nothing baselines are not trained
            continue
        last = attempts[-1]
        series = {name: last.get(name, []) for name in HISTORY_SERIES}
        steps = max(len(values) for values in series.values())
        columns = {
            "model": [fields["model"]] * steps,
            "target": [fields["target"]] * steps,
            "lambda": [fields["lam"]] * steps,
            "attempts": [len(attempts)] * steps,
            "step": list(range(steps)),
            **{name: _padded(values, steps) for name, values in series.items()},
        }
        frames.append(pl.DataFrame(columns, schema=HISTORY_SCHEMA))
    return pl.concat(frames) if frames else pl.DataFrame(schema=HISTORY_SCHEMA)


def _padded(values: list[float], length: int) -> list[float]:
    return [float(v) for v in values] + [math.nan] * (length - len(values))


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


def read_benchmarks(files: list[Path] | None) -> pl.DataFrame:
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
    return pl.DataFrame(rows, schema=BENCHMARK_SCHEMA)


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "", "-", "NA") else math.nan
    except ValueError:
        return math.nan


def stage_costs(cfg: Config, benchmarks: pl.DataFrame) -> pl.DataFrame:
    """Wall-clock seconds per stage (sum over its jobs), jobs measured and peak memory; stages
    without a benchmark file have NaN seconds. Stages measured but not expected come last."""
    stages = [stage.name for stage in stages_for(cfg, "snakemake")]
    stages += sorted(set(benchmarks["stage"].to_list()) - set(stages))
    per_stage = benchmarks.group_by("stage").agg(
        pl.len().alias("jobs"),
        pl.col("seconds").fill_nan(None).sum(),
        pl.col("max_rss_mb").fill_nan(None).max(),
    )
    expected = pl.DataFrame({"stage": stages}, schema={"stage": pl.String})
    costs = expected.join(per_stage, on="stage", how="left", maintain_order="left")
    return costs.select(
        "stage",
        pl.col("jobs").fill_null(0).cast(pl.Int64),
        pl.col("seconds").fill_null(math.nan).cast(pl.Float64),
        pl.col("max_rss_mb").fill_null(math.nan).cast(pl.Float64),
    )


def load_run(
    cfg: Config, inputs: dict[str, Any], benchmark_files: list[Path] | None = None
) -> RunTables:
    """Read every table of a finished run from the report stage's inputs (paths by name)."""
    tables = {name: read_table(inputs[name], artifact) for name, artifact in TABLES.items()}
    optional: dict[str, pl.DataFrame | None] = dict.fromkeys(CHECKPOINT_TABLES)
    if cfg.checkpoints is not None:
        optional = {
            name: read_table(inputs[name], artifact) for name, artifact in CHECKPOINT_TABLES.items()
        }
    replicate_tables = dict(REPLICATE_TABLES)
    if cfg.checkpoints is not None:
        replicate_tables |= CHECKPOINT_REPLICATES
    replicates = pl.concat(
        [read_table(inputs[name], artifact) for name, artifact in replicate_tables.items()]
    )
    model_dirs = [Path(p) for p in inputs["models"]]
    bigram_meta = Path(inputs["bigram_stats"]) / A.BIGRAM_STATS.files[-1]
    return RunTables(
        models=[d.name for d in model_dirs],
        **tables,
        **optional,
        selection=read_json(inputs["selection"]),
        model_info={d.name: read_json(d / A.MODEL.files[0]) for d in model_dirs},
        histories=read_histories([Path(p) for p in inputs["mask_logs"]]),
        data_info={"bigrams": read_json(bigram_meta), "tokens": read_json(inputs["tokens_meta"])},
        benchmarks=read_benchmarks(benchmark_files),
        replicates=replicates,
    )
