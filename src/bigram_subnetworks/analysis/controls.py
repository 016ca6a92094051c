"""The paper's Table 2: how much of the bigram r comes from the embeddings, and from training.

For every control model (`stages.control_models`: every embedded model, each saves step 0, and
every checkpoint model), bigram r (with λ = 0 masks, as in the paper) of: the full model; its
bigram subnetwork (λ = 0, and the selected λ); a bigram subnetwork of the randomly initialised
model (the step-0 checkpoint's λ = 0 mask); a bigram subnetwork of a model whose body is the step-0
initialisation but whose token embeddings and unembedding are the trained ones (the model variant
`random-body`; GPT-2's position embeddings stay at step 0, as in the paper); the embeddings alone
(the empty mask); and the embeddings plus the layer-0 linear map L_out that the residual stage
fits on the **bigram subnetwork** (its "bigram" condition, as the paper's §A.4 and footnote 11 do),
scored on the residual stage's held-out sequences.

Every r comes with its bootstrap interval (`bigram_r_low`/`_high`) and the unseen-bigram fraction
of the positions it was scored on. Every mask is trained by the train_mask stage; this stage scores
the step-0 and random-body masks on their own weights and gathers the other stages' tables.
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
LINEAR_MAP_CONDITION = "bigram"  # the residual condition whose layer-0 map Table 2 uses (§A.4)
LINEAR_MAP = "layer0_linear_map_"  # prefix of the residual stage's linear-map metrics
STEP_0 = "step-0"  # the model variant of the random initialisation
CONTROL_METRICS = (
    "bigram_r",
    "bigram_r_low",
    "bigram_r_high",
    "bigram_r_dropinf",
    "bigram_r_dropinf_low",
    "bigram_r_dropinf_high",
    "unseen_fraction",
    "kept",
    "kept_fraction",
)


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
        if metric in CONTROL_METRICS
    ]


def linear_map_values(residual_rows: list[dict[str, Any]], model: str) -> dict[str, float]:
    """The layer-0 linear-map control of one model from the residual stage's rows: its bigram r,
    interval, drop-unseen r and unseen fraction, from the bigram-subnetwork condition (the paper
    fits L_out on the bigram subnetwork, §A.4 footnote 11), under the controls' metric names."""
    values = {
        row["metric"].removeprefix(LINEAR_MAP): row["value"]
        for row in residual_rows
        if row["model"] == model
        and row["condition"] == LINEAR_MAP_CONDITION
        and row["metric"].startswith(LINEAR_MAP)
    }
    if "bigram_r" not in values:
        raise UserError(
            f"residual table: no layer-0 linear map r of {model}'s bigram subnetwork; rerun "
            "the residual stage"
        )
    return values


def control_table(
    model: str,
    chosen: str,
    evaluated: list[dict[str, Any]],
    step0: list[dict[str, Any]],
    hybrid: list[dict[str, Any]],
    residual_rows: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """The control rows of one model from the evaluate stage's rows, the step-0 checkpoint's
    rows, the trained-embeddings control's rows (target `random-body`) and the residual rows;
    `chosen` is the selected bigram λ."""
    from bigram_subnetworks.analysis.scoring import REFERENCE

    table = [
        ("full model", "neginf", _values(evaluated, model, REFERENCE, "neginf")),
        ("bigram subnetwork", "0", _values(evaluated, model, "bigram", "0")),
        ("bigram subnetwork (selected λ)", chosen, _values(evaluated, model, "bigram", chosen)),
        ("random init", "0", _values(step0, model, "bigram", "0")),
        ("random body, trained embeddings", "0", _values(hybrid, model, RANDOM_BODY, "0")),
        ("embeddings only", "inf", _values(evaluated, model, REFERENCE, "inf")),
        ("embeddings + layer-0 linear map", chosen, linear_map_values(residual_rows, model)),
    ]
    rows: list[dict[str, Any]] = []
    for control, label, values in table:
        rows += _control_rows(model, control, label, values)
    return rows


def _score_variant(
    cfg: Config,
    model_dir: Path,
    variant: str,
    masks: list[Any],
    counts: Any,
    evaluation: Any,
    device: Any,
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Metric rows of one control model's variant (`step-0`, `random-body`) and its masks,
    scored on the variant's own weights (masks trained on other weights are refused), and the
    bootstrap replicates of their r (under the variant's model key, for paired comparisons)."""
    from bigram_subnetworks.analysis.scoring import replicate_series, score_masks
    from bigram_subnetworks.models.variants import load_variant

    network, identity = load_variant(model_dir, variant)
    found = score_masks(
        model_dir.name,
        network,
        masks,
        counts,
        evaluation,
        cfg.analysis.batch_size,
        device,
        identity,
        resamples=cfg.analysis.bootstrap_resamples,
        seed=cfg.seed,
    )
    return found.metrics, replicate_series(model_key(model_dir.name, variant), found.replicates)


def run_stage(
    cfg: Config,
    *,
    models: list[Path],
    masks: list[Path],
    mask_metrics: Path,
    residual: Path,
    selection: Path,
    tokens_eval: Path,
    bigram_stats: Path,
    controls: Path,
    control_replicates: Path,
) -> None:
    """The controls stage: score every control model's random-initialisation (`<model>+step-0`)
    and trained-embeddings (`<model>+random-body`) masks and write `controls.parquet` from them
    and the other stages' tables."""
    from bigram_subnetworks.analysis.scoring import eval_sample, index_masks, replicate_table
    from bigram_subnetworks.analysis.select import read_selection
    from bigram_subnetworks.data.bigrams import read_bigram_counts
    from bigram_subnetworks.data.tokenize import read_sequences
    from bigram_subnetworks.models.loading import pick_device

    columns = ["model", "target", "lambda", "metric", "value"]
    evaluated = read_parquet(mask_metrics, columns=columns).to_pylist()
    residual_rows = read_parquet(
        residual, columns=["model", "condition", "metric", "value"]
    ).to_pylist()
    counts = read_bigram_counts(bigram_stats)
    evaluation = eval_sample(read_sequences(tokens_eval), cfg.analysis.eval_sequences, cfg.seed)
    device = pick_device(cfg.device)
    index = index_masks(masks)
    rows: list[dict[str, Any]] = []
    series: list[Any] = []
    for model_dir in models:
        name = model_dir.name
        step0_masks = index.get(model_key(name, STEP_0), [])
        hybrid_masks = [  # scored under the control's own target name
            replace(m, target=RANDOM_BODY) for m in index.get(model_key(name, RANDOM_BODY), [])
        ]
        step0, step0_draws = _score_variant(
            cfg, model_dir, STEP_0, step0_masks, counts, evaluation, device
        )
        hybrid, hybrid_draws = _score_variant(
            cfg, model_dir, RANDOM_BODY, hybrid_masks, counts, evaluation, device
        )
        series += step0_draws + hybrid_draws
        chosen = read_selection(selection, name)["bigram"]["lambda"]
        rows += control_table(name, chosen, evaluated, step0, hybrid, residual_rows)
        summary = ", ".join(
            f"{r['control']} {r['value']:.3f}"
            for r in rows
            if r["model"] == name and r["metric"] == "bigram_r"
        )
        log.info("%s: bigram r of the controls: %s", name, summary)
    with atomic_outputs(controls, control_replicates) as (temp, temp_replicates):
        write_parquet(pa.Table.from_pylist(rows, schema=SCHEMA), temp, seed=cfg.seed)
        write_parquet(replicate_table(series), temp_replicates, seed=cfg.seed)
    log.info("controls of %d model(s) -> %s", len(models), controls)
