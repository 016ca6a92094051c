"""The paper's Table 2: how much of the bigram r comes from the embeddings, and from training.

For every model of the checkpoint analysis, bigram r (with λ = 0 masks, as in the paper) of:
the full model; its bigram subnetwork (λ = 0, and the selected λ); a bigram subnetwork of the
randomly initialised model (the step-0 checkpoint's λ = 0 mask); a bigram subnetwork of a model
whose body is the step-0 initialisation but whose token embeddings, unembedding (and GPT-2's
position embeddings) are the trained ones (the model variant `random-body`); the embeddings alone
(the empty mask); and the embeddings plus the layer-0 linear map of the residual analysis.

Every mask is trained by the train_mask stage; this stage scores the control model and gathers
the other stages' tables.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from bigram_subnetworks.artifacts import CONTROLS, RANDOM_BODY, model_key
from bigram_subnetworks.config import Config
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import atomic_outputs, read_parquet, write_parquet

log = logging.getLogger(__name__)

SCHEMA = CONTROLS.schema


def _values(table: list[dict[str, Any]], model: str, target: str, label: str) -> dict[str, float]:
    return {
        row["metric"]: row["value"]
        for row in table
        if row["model"] == model and row["target"] == target and row["lambda"] == label
    }


def _control_rows(
    model: str, control: str, label: str, values: dict[str, float]
) -> list[dict[str, Any]]:
    if "bigram_r" not in values:
        raise UserError(
            f"model {model}: no bigram r for control {control!r} (λ={label}); "
            "rerun the stage that scores it"
        )
    return [
        {"model": model, "control": control, "lambda": label, "metric": metric, "value": value}
        for metric, value in values.items()
        if metric in ("bigram_r", "bigram_r_dropinf", "kept", "kept_fraction")
    ]


def run_stage(
    cfg: Config,
    *,
    models: list[Path],
    masks: list[Path],
    mask_metrics: Path,
    checkpoints: Path,
    residual: Path,
    selection: Path,
    tokens_eval: Path,
    bigram_stats: Path,
    controls: Path,
) -> None:
    """The controls stage: score the trained-embeddings control masks (`<model>+random-body`)
    and write `controls.parquet` from them and the other stages' tables."""
    from bigram_subnetworks.analysis.scoring import (
        REFERENCE,
        eval_sample,
        evaluate_model,
        index_masks,
    )
    from bigram_subnetworks.analysis.select import read_selection
    from bigram_subnetworks.data.bigrams import read_bigram_counts
    from bigram_subnetworks.data.tokenize import read_sequences
    from bigram_subnetworks.models.loading import pick_device
    from bigram_subnetworks.models.variants import load_variant

    columns = ["model", "target", "lambda", "metric", "value"]
    evaluated = read_parquet(mask_metrics, columns=columns).to_pylist()
    step0 = [
        row
        for row in read_parquet(checkpoints, columns=["step", *columns]).to_pylist()
        if row["step"] == 0
    ]
    residual_rows = read_parquet(
        residual, columns=["model", "condition", "metric", "value"]
    ).to_pylist()
    counts = read_bigram_counts(bigram_stats)
    evaluation = eval_sample(read_sequences(tokens_eval), cfg.analysis.eval_sequences, cfg.seed)
    device = pick_device(cfg.device)
    index = index_masks(masks)
    rows: list[dict[str, Any]] = []
    for model_dir in models:
        name = model_dir.name
        hybrid, _ = load_variant(model_dir, RANDOM_BODY)
        hybrid_masks = [
            replace(m, target=RANDOM_BODY) for m in index.get(model_key(name, RANDOM_BODY), [])
        ]
        hybrid_rows, _ = evaluate_model(
            name, hybrid, hybrid_masks, counts, evaluation, cfg.analysis.batch_size, device
        )
        chosen = read_selection(selection, name)["bigram"]["lambda"]
        linear = [
            r["value"]
            for r in residual_rows
            if r["model"] == name
            and r["condition"] == "full model"
            and r["metric"] == "layer0_linear_map_bigram_r"
        ]
        if not linear:
            raise UserError(f"{residual}: no layer-0 linear map r for {name}; rerun residual")
        table = [
            ("full model", "neginf", _values(evaluated, name, REFERENCE, "neginf")),
            ("bigram subnetwork", "0", _values(evaluated, name, "bigram", "0")),
            ("bigram subnetwork (selected λ)", chosen, _values(evaluated, name, "bigram", chosen)),
            ("random init", "0", _values(step0, name, "bigram", "0")),
            ("random body, trained embeddings", "0", _values(hybrid_rows, name, RANDOM_BODY, "0")),
            ("embeddings only", "inf", _values(evaluated, name, REFERENCE, "inf")),
            ("embeddings + layer-0 linear map", "neginf", {"bigram_r": linear[0]}),
        ]
        for control, label, values in table:
            rows += _control_rows(name, control, label, values)
        summary = ", ".join(
            f"{r['control']} {r['value']:.3f}"
            for r in rows
            if r["model"] == name and r["metric"] == "bigram_r"
        )
        log.info("%s: bigram r of the controls: %s", name, summary)
    with atomic_outputs(controls) as (temp,):
        write_parquet(pa.Table.from_pylist(rows, schema=SCHEMA), temp, seed=cfg.seed)
    log.info("controls of %d model(s) -> %s", len(models), controls)
