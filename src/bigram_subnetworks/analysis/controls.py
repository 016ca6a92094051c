"""The paper's Table 2: how much of the bigram r comes from the embeddings, and from training.

For every model of the checkpoint analysis, bigram r (with λ = 0 masks, as in the paper) of:
the full model; its bigram subnetwork (λ = 0, and the selected λ); a bigram subnetwork of the
randomly initialised model (the step-0 checkpoint's λ = 0 mask); a bigram subnetwork of a model
whose body is the step-0 initialisation but whose token embeddings, unembedding (and GPT-2's
position embeddings) are the trained ones (trained here); the embeddings alone (the empty mask);
and the embeddings plus the layer-0 linear map of the residual analysis.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from bigram_subnetworks.analysis.checkpoints import METRICS_FILE, checkpoint_dir
from bigram_subnetworks.config import Config
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import atomic_outputs, read_parquet, write_parquet

log = logging.getLogger(__name__)

RANDOM_BODY = "random-body"  # the mask folder of the trained-embeddings control
SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("control", pa.string()),
        ("lambda", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ]
)


def embedding_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The token embedding, the unembedding and (GPT-2) the position embedding."""
    from bigram_subnetworks.models.layout import body

    modules = [model.get_input_embeddings(), model.get_output_embeddings()]
    position = getattr(body(model), "wpe", None)
    return modules + ([position] if position is not None else [])


@torch.no_grad()
def transplant_embeddings(target: torch.nn.Module, source: torch.nn.Module) -> None:
    """Copy the embedding modules' parameters of `source` into `target` (same shapes)."""
    for into, origin in zip(embedding_modules(target), embedding_modules(source), strict=True):
        for (name, param), other in zip(into.named_parameters(), origin.parameters(), strict=True):
            if param.shape != other.shape:
                raise UserError(
                    f"embedding {name}: shapes {tuple(param.shape)} and "
                    f"{tuple(other.shape)} differ; the checkpoints are not one model"
                )
            param.copy_(other)


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


def run_controls(
    cfg: Config,
    models_dir: Path,
    checkpoints_dir: Path,
    metrics_dir: Path,
    selection: Path,
    data_dir: Path,
    masks_output_dir: Path,
    output: Path,
) -> None:
    """The controls stage: train the trained-embeddings control masks and write `controls.parquet`
    from them and the other stages' tables."""
    from bigram_subnetworks.analysis.evaluate import (
        REFERENCE,
        MaskFile,
        eval_sample,
        evaluate_model,
    )
    from bigram_subnetworks.analysis.select import read_selection
    from bigram_subnetworks.data.bigrams import read_bigram_counts
    from bigram_subnetworks.data.tokenize import read_sequences
    from bigram_subnetworks.masks.train import MaskRun, train_mask
    from bigram_subnetworks.models.loading import (
        load_checkpoint,
        load_model,
        model_identity,
        pick_device,
    )

    if cfg.checkpoints is None:
        raise UserError("checkpoints: not configured; the controls use its step-0 checkpoint")
    columns = ["model", "target", "lambda", "metric", "value"]
    evaluated = read_parquet(metrics_dir / "masks.parquet", columns=columns).to_pylist()
    residual = read_parquet(
        metrics_dir / "residual.parquet", columns=["model", "condition", "metric", "value"]
    ).to_pylist()
    counts = read_bigram_counts(data_dir)
    train = read_sequences(data_dir / "tokens_train.parquet")
    evaluation = eval_sample(
        read_sequences(data_dir / "tokens_eval.parquet"), cfg.analysis.eval_sequences, cfg.seed
    )
    device = pick_device(cfg.device)
    rows: list[dict[str, Any]] = []
    for name in cfg.checkpoints.models:
        trust = bool(getattr(cfg.models[name], "trust_remote_code", False))
        trained, info = load_model(models_dir / name, trust_remote_code=trust)
        hybrid, identity = load_checkpoint(models_dir / name, 0, trust_remote_code=trust)
        transplant_embeddings(hybrid, trained)
        identity |= {"embeddings_from": model_identity(models_dir / name, info)}
        path = masks_output_dir / name / RANDOM_BODY / "lambda-0.safetensors"
        log.info(
            "%s: training the λ=0 bigram mask of the random body with trained embeddings", name
        )
        train_mask(
            hybrid,
            MaskRun("bigram", "0", cfg.masks, cfg.seed, identity),
            train,
            counts,
            path,
            device,
        )
        hybrid_rows, _ = evaluate_model(
            name,
            hybrid,
            [MaskFile(RANDOM_BODY, "0", path)],
            counts,
            evaluation,
            cfg.analysis.batch_size,
            device,
        )

        step0 = read_parquet(
            checkpoint_dir(checkpoints_dir, name, 0) / METRICS_FILE, columns=columns
        ).to_pylist()
        chosen = read_selection(selection, name)["bigram"]["lambda"]
        linear = [
            r["value"]
            for r in residual
            if r["model"] == name
            and r["condition"] == "full model"
            and r["metric"] == "layer0_linear_map_bigram_r"
        ]
        if not linear:
            raise UserError(
                f"{metrics_dir / 'residual.parquet'}: no layer-0 linear map r for "
                f"{name}; rerun the residual stage"
            )
        controls = [
            ("full model", "neginf", _values(evaluated, name, REFERENCE, "neginf")),
            ("bigram subnetwork", "0", _values(evaluated, name, "bigram", "0")),
            ("bigram subnetwork (selected λ)", chosen, _values(evaluated, name, "bigram", chosen)),
            ("random init", "0", _values(step0, name, "bigram", "0")),
            ("random body, trained embeddings", "0", _values(hybrid_rows, name, RANDOM_BODY, "0")),
            ("embeddings only", "inf", _values(evaluated, name, REFERENCE, "inf")),
            ("embeddings + layer-0 linear map", "neginf", {"bigram_r": linear[0]}),
        ]
        for control, label, values in controls:
            rows += _control_rows(name, control, label, values)
        summary = ", ".join(
            f"{r['control']} {r['value']:.3f}"
            for r in rows
            if r["model"] == name and r["metric"] == "bigram_r"
        )
        log.info("%s: bigram r of the controls: %s", name, summary)
    with atomic_outputs(output) as (temp,):
        write_parquet(pa.Table.from_pylist(rows, schema=SCHEMA), temp, seed=cfg.seed)
    log.info("controls of %d model(s) -> %s", len(cfg.checkpoints.models), output)
