"""The evaluate stage: score every mask of the main grid, and each full model, on held-out
sequences, with a seeded bootstrap interval beside every r (the scoring itself is
`analysis.scoring`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from bigram_subnetworks.analysis.scoring import (
    BLOCK_SCHEMA,
    METRIC_SCHEMA,
    MaskFile,
    ReplicateSeries,
    eval_sample,
    index_masks,
    replicate_series,
    replicate_table,
    score_masks,
)
from bigram_subnetworks.artifacts import NGRAM_ORDERS
from bigram_subnetworks.config import Config
from bigram_subnetworks.io import atomic_outputs, write_parquet

log = logging.getLogger(__name__)


def run_stage(
    cfg: Config,
    *,
    models: list[Path],
    masks: list[Path],
    tokens_eval: Path,
    bigram_stats: Path,
    mask_metrics: Path,
    blocks: Path,
    mask_replicates: Path,
    ngram_stats: list[Path] | None = None,
    ngram_meta: list[Path] | None = None,
) -> None:
    """The evaluate stage: `masks.parquet`, `blocks.parquet` and the bootstrap replicates of every
    r (`masks_replicates.parquet`) for the given models and masks, with the r values of every
    n-gram target among the masks (orders >= 3 from `ngram_stats`, each with its JSON in
    `ngram_meta`)."""
    from bigram_subnetworks.data.bigrams import read_bigram_counts
    from bigram_subnetworks.data.tokenize import read_sequences
    from bigram_subnetworks.masks.stage import read_higher_orders
    from bigram_subnetworks.masks.train import target_tables
    from bigram_subnetworks.models.loading import load_model, model_identity, pick_device

    counts = read_bigram_counts(bigram_stats)
    higher = read_higher_orders(ngram_stats or [], ngram_meta or [])
    # A run with n-gram targets beside the bigram scores every mask against each of them (and the
    # bigram's context share); a bigram-only run's tables stay as they were.
    targets = {MaskFile.of(path).target for path in masks} & set(NGRAM_ORDERS)
    ngram_tables = (
        {
            target: target_tables(target, counts, higher)
            for target in NGRAM_ORDERS
            if target in targets | {"bigram"}
        }
        if targets - {"bigram"}
        else {}
    )
    sequences = eval_sample(read_sequences(tokens_eval), cfg.analysis.eval_sequences, cfg.seed)
    device = pick_device(cfg.device)
    index = index_masks(masks)
    metrics: list[dict[str, Any]] = []
    block_rows: list[dict[str, Any]] = []
    series: list[ReplicateSeries] = []
    for model_dir in models:
        name = model_dir.name
        model, info = load_model(model_dir)
        found = score_masks(
            name,
            model,
            index.get(name, []),
            counts,
            sequences,
            cfg.analysis.batch_size,
            device,
            model_identity(model_dir, info),
            resamples=cfg.analysis.bootstrap_resamples,
            seed=cfg.seed,
            min_context_count=cfg.analysis.min_context_count,
            ngram_tables=ngram_tables,
        )
        metrics += found.metrics
        block_rows += found.blocks
        series += replicate_series(name, found.replicates, names=found.replicate_names)
    with atomic_outputs(mask_metrics, blocks, mask_replicates) as (
        metric_file,
        block_file,
        replicate_file,
    ):
        write_parquet(
            pa.Table.from_pylist(metrics, schema=METRIC_SCHEMA), metric_file, seed=cfg.seed
        )
        write_parquet(
            pa.Table.from_pylist(block_rows, schema=BLOCK_SCHEMA), block_file, seed=cfg.seed
        )
        write_parquet(replicate_table(series), replicate_file, seed=cfg.seed)
    log.info(
        "evaluated %d masks of %d models on %d eval sequences -> %s",
        len({(r["model"], r["target"], r["lambda"]) for r in metrics}),
        len(models),
        len(sequences),
        mask_metrics.parent,
    )
