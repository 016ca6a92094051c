"""The report stage: figures, self-contained HTML, Markdown, DVC metrics and paper verdicts.

Most tests build a small synthetic run whose tables follow the analysis stages' schemas and
whose numbers behave like the paper's, then change one number and check that the verdict it
decides changes with it (nothing is hard-coded). One test renders the report of a copy of the
smoke run's tables when a finished smoke run exists.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from html import escape
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bigram_subnetworks import artifacts as A
from bigram_subnetworks.analysis.ablate import sweep_condition
from bigram_subnetworks.cli import main
from bigram_subnetworks.config import Config, lambda_value, validate_config
from bigram_subnetworks.io import write_json, write_parquet
from bigram_subnetworks.report.build import run_subtitle
from bigram_subnetworks.report.claims import (
    DESCRIPTIVE,
    FAILS,
    HOLDS,
    NOT_MEASURED,
    NOT_RESOLVED,
    Evidence,
    verdicts,
)
from bigram_subnetworks.report.figures import BUILDERS, FigureData, figure_style, png_bytes
from bigram_subnetworks.report.summary import (
    control_values,
    summarise,
    summarise_checkpoints,
)
from bigram_subnetworks.report.tables import (
    benchmark_stage,
    load_run,
    read_benchmarks,
    stage_costs,
)
from bigram_subnetworks.stages import STAGES, arguments, benchmark_files, job_fields, stages_for

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KINDS = ("Q", "K", "V", "O", "MLP-in", "MLP-out")
LOW, HIGH = "_low", "_high"
CHECKPOINT_STEPS = (0, 292, 1209, 5000)

RAW_CONFIG: dict[str, Any] = {
    "run": "synthetic",
    "corpus": {"name": "toy", "source": "sotu"},
    "tokenizer": {"name": "toy-bpe", "source": "train", "vocab_size": 512},
    "models": {
        "tiny-a": {"source": "embedded", "layers": 2, "d_model": 16, "heads": 2},
        "tiny-b": {"source": "embedded", "layers": 3, "d_model": 24, "heads": 2},
    },
    "lambdas": {"bigram": ["neginf", "0", "1", "1e1", "1e2", "inf"], "full": ["1e1", "1e2"]},
    "checkpoints": {
        "models": ["tiny-b"],
        "steps": list(CHECKPOINT_STEPS),
        "lambdas": ["0", "1e1", "1e2"],
        "budgets": [1000, 5000],
    },
}


@dataclass
class Spec:
    """The numbers of a synthetic run; the defaults behave like the paper's findings."""

    full_r: float = 0.70
    sweep: dict[str, tuple[float, float]] = field(  # bigram λ -> (kept fraction, r)
        default_factory=lambda: {
            "0": (0.50, 0.90),
            "1": (0.20, 0.89),
            "1e1": (0.05, 0.87),
            "1e2": (0.01, 0.80),
        }
    )
    optimal: dict[str, tuple[float, float, float]] = field(  # λ -> (kept, bigram r, full r)
        default_factory=lambda: {"1e1": (0.08, 0.85, 0.90), "1e2": (0.03, 0.80, 0.70)}
    )
    first_mlp_share: float = 0.6
    checkpoint_plurality: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)  # per checkpoint step
    overlap_ratio: float = 8.0
    bigram_tokens: int = 3200  # what the bigram statistics counted (the train sequences: 100 x 32)
    overlap_p: float = 1 / 10_001
    overlap_draws: int = 10_000
    half_width: float = 0.005  # of every r's bootstrap interval
    unseen: float = 0.0
    surprisal: dict[str, float] = field(
        default_factory=lambda: {
            "full model": 5.90,
            "bigram alone": 7.50,
            "random alone": 9.00,
            "bigram removed": 6.90,
            "random removed": 5.95,
            "optimal removed": 7.00,
        }
    )
    rotation_layer1: dict[str, float] = field(
        default_factory=lambda: {"full model": 50.0, "bigram": 40.0, "random": 5.0}
    )
    covariance_01: dict[str, float] = field(
        default_factory=lambda: {"full model": 0.30, "bigram": 0.40, "random": 0.98}
    )
    controls: dict[str, float] = field(
        default_factory=lambda: {
            "full model": 0.68,
            "bigram subnetwork": 0.90,
            "bigram subnetwork (selected λ)": 0.87,
            "random init": 0.75,
            "random body, trained embeddings": 0.89,
            "embeddings only": 0.40,
            "embeddings + layer-0 linear map": 0.70,
        }
    )
    checkpoint_full_r: tuple[float, ...] = (0.05, 0.85, 0.75, 0.68)
    r_at_budget: dict[int, tuple[float, ...]] = field(
        default_factory=lambda: {1000: (0.50, 0.80, 0.86, 0.83), 5000: (0.55, 0.84, 0.88, 0.86)}
    )
    generation: str = "the <script>alert(1)</script> & more\n\n\n"


def _parquet(path: Path, rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(pa.Table.from_pylist(rows, schema=schema), path)


def _interval(metric: str, value: float, spec: Spec) -> dict[str, float]:
    """A metric with its bootstrap interval (value ± spec.half_width)."""
    return {
        metric: value,
        f"{metric}_low": value - spec.half_width,
        f"{metric}_high": value + spec.half_width,
    }


def _mask_metrics(kept: int, masked: int, r: float, full_r: float, spec: Spec) -> dict[str, float]:
    loss = 4.0 + (1 - kept / masked)
    return {
        "kept": kept,
        "kept_fraction": kept / masked,
        **_interval("bigram_r", r, spec),
        **_interval("bigram_r_dropinf", r - 0.01 if spec.unseen else r, spec),
        "bigram_cross_entropy": loss + 0.1,
        "lm_loss": loss,
        "perplexity": math.exp(loss),
        "mean_surprisal_bits": loss / math.log(2),
        **_interval("full_model_r", full_r, spec),
        "unseen_fraction": spec.unseen,
    }


def _block_rows(model: str, target: str, label: str, layers: int, d: int, kept: int, spec: Spec):
    """Per-block rows: `first_mlp_share` of the kept weights in layer 0's MLP, the rest spread
    evenly over the other blocks (and a few per-head rows, which the report must ignore)."""
    sizes = {kind: d * d * (4 if kind.startswith("MLP") else 1) for kind in KINDS}
    others = [(layer, k) for layer in range(layers) for k in KINDS if layer or k in KINDS[:4]]
    rows = []
    for layer in range(layers):
        for kind in KINDS:
            if layer == 0 and kind.startswith("MLP"):
                count = kept * spec.first_mlp_share / 2
            else:
                count = kept * (1 - spec.first_mlp_share) / len(others)
            count = min(sizes[kind], round(count))
            rows.append(
                {
                    "model": model,
                    "target": target,
                    "lambda": label,
                    "layer": layer,
                    "kind": kind,
                    "head": None,
                    "kept": count,
                    "size": sizes[kind],
                    "fraction": count / sizes[kind],
                    "param": f"gpt_neox.layers.{layer}.{PARAMS[kind]}.weight",
                }
            )
    rows.append({**rows[0], "head": 0, "kept": 0, "size": d * d // 2, "fraction": 0.0})
    return rows


PARAMS = {
    "Q": "attention.query_key_value",
    "K": "attention.query_key_value",
    "V": "attention.query_key_value",
    "O": "attention.dense",
    "MLP-in": "mlp.dense_h_to_4h",
    "MLP-out": "mlp.dense_4h_to_h",
}


def _residual_rows(model: str, condition: str, layers: int, spec: Spec) -> list[dict[str, Any]]:
    """Rotations (layer 1 from `spec`), recall and covariance similarities of one condition."""

    def row(metric: str, layer: int, value: float, layer_b: int | None = None) -> dict[str, Any]:
        return {
            "model": model,
            "condition": condition,
            "metric": metric,
            "layer": layer,
            "layer_b": layer_b,
            "value": value,
        }

    rows = [row("layer0_linear_map_bigram_r", 0, 0.7)]
    rows += [
        row(f"layer0_linear_map_bigram_r{end}", 0, 0.7 + d)
        for end, d in ((LOW, -0.01), (HIGH, 0.01))
    ]
    for layer in range(layers + 1):
        to_input = 0.0 if layer == 0 else spec.rotation_layer1[condition] + layer
        rows.append(row("rotation_to_input", layer, to_input))
        rows.append(row("rotation_to_output", layer, 0.0 if layer == layers else 70.0 - 20 * layer))
        rows.append(row("recall@1", layer, 0.9))
        for other in range(layers + 1):
            similarity = 1.0 if layer == other else 0.8
            if {layer, other} == {0, 1}:
                similarity = spec.covariance_01[condition]
            rows.append(row("covariance_similarity", layer, similarity, other))
    return rows


def _history(steps: int, final_kept: float) -> dict[str, list[float]]:
    return {
        "loss": [5.0 - 0.01 * i for i in range(steps)],
        "penalty": [0.5 - 0.004 * i for i in range(steps)],
        "kept": [0.5 + (final_kept - 0.5) * i / (steps - 1) for i in range(steps)],
        "undecided": [1.0 - i / steps for i in range(steps)],
        "temperature": [1.02**i for i in range(steps)],
    }


def write_run(root: Path, cfg: Config, spec: Spec) -> tuple[Path, Path]:
    """Write a complete synthetic run (tables, logs, selection, model and data JSON) under
    `root` and return (run_dir, data_dir)."""
    fields = job_fields(cfg, {})
    run_dir = root / "results" / cfg.run
    data_dir = root / A.BIGRAM_STATS.render(**fields)
    masks, blocks, overlap, null, ablations, generations, residual = ([] for _ in range(7))
    selection: dict[str, Any] = {"metric": "bigram_r", "tolerance": 0.04, "models": {}}
    for name, model in cfg.models.items():
        layers, d = model.layers, model.d_model
        masked = 12 * layers * d * d
        entries = {
            ("reference", "neginf"): (masked, spec.full_r, 1.0),
            ("reference", "inf"): (0, 0.3, 0.5),
            ("bigram", "neginf"): (masked, spec.full_r, 1.0),
            ("bigram", "inf"): (0, 0.3, 0.5),
            **{("bigram", k): (round(f * masked), r, 0.8) for k, (f, r) in spec.sweep.items()},
            **{("full", k): (round(f * masked), r, fr) for k, (f, r, fr) in spec.optimal.items()},
        }
        for (target, label), (kept, r, full_r) in entries.items():
            values = _mask_metrics(kept, masked, r, full_r, spec)
            if (target, label) == ("reference", "neginf"):
                values["bigram_baseline_loss"] = 4.5  # scored beside the full model's loss
            for metric, value in values.items():
                masks.append(
                    {
                        "model": name,
                        "target": target,
                        "lambda": label,
                        "lambda_value": lambda_value(label),
                        "metric": metric,
                        "value": value,
                    }
                )
            blocks += _block_rows(name, target, label, layers, d, kept, spec)

        selection["models"][name] = {
            role: {
                "lambda": label,
                "kept": entries[(target, label)][0],
                "kept_fraction": entries[(target, label)][0] / masked,
                "bigram_r": entries[(target, label)][1],
            }
            for role, target, label in (
                ("reference", "bigram", "0"),
                ("bigram", "bigram", "1e1"),
                ("optimal", "full", "1e1"),
            )
        }
        expected = 0.05 * 0.08
        observed = expected * spec.overlap_ratio
        for bigram_label in spec.sweep:
            is_selected = bigram_label == "1e1"
            overlap.append(
                {
                    "model": name,
                    "bigram_lambda": bigram_label,
                    "optimal_lambda": "1e1",
                    "selected": is_selected,
                    "observed": observed,
                    "expected": expected,
                    "expected_sd": expected / 10,
                    "ratio": spec.overlap_ratio * 1.5 if is_selected else 3.0,
                    "p_value": spec.overlap_p if is_selected else 0.5,
                    "null_mean": expected,
                    "null_sd": expected / 10,
                    "share_a_in_b": observed / 0.05,
                    "kept_a": 0.05,
                    "kept_b": 0.08,
                    "observed_count": round(observed * masked),
                    "n_masked": masked,
                    "draws": spec.overlap_draws,
                    "seed": 0,
                    "row_expected": expected,
                    "row_expected_sd": expected / 10,
                    "row_ratio": spec.overlap_ratio if is_selected else 2.0,
                    "row_p_value": spec.overlap_p if is_selected else None,
                    "row_null_mean": expected if is_selected else None,
                    "row_null_sd": expected / 10 if is_selected else None,
                }
            )
        null += [
            {
                "model": name,
                "draw": i,
                "overlap": expected / 1.5 * (1 + 0.1 * math.sin(i)),
                "row_overlap": expected * (1 + 0.1 * math.cos(i)),
            }
            for i in range(200)
        ]
        paired = spec.surprisal.get("optimal removed")
        sweep_means = {  # removal of every optimal mask of the sweep: harm ∝ its size
            sweep_condition(label): (
                masked - round(fraction * masked),
                spec.surprisal["full model"]
                + (paired - spec.surprisal["full model"]) * fraction / spec.optimal["1e1"][0],
            )
            for label, (fraction, _, _) in spec.optimal.items()
            if paired is not None
        }
        for condition, (kept, mean) in {
            **{c: (masked, mean) for c, mean in spec.surprisal.items()},
            **sweep_means,
        }.items():
            ablations.append(
                {
                    "model": name,
                    "condition": condition,
                    "kept": kept,
                    "kept_fraction": kept / masked,
                    "mean_surprisal_bits": mean,
                    "sd_surprisal_bits": 2.0,
                    "lm_loss": mean * math.log(2),
                    "perplexity": 2**mean,
                    "tokens": 1000,
                }
            )
            generations.append(
                {
                    "model": name,
                    "condition": condition,
                    "prompt": "This is a sentence that",
                    "decoding": "greedy",
                    "text": spec.generation,
                }
            )
        for condition in ("full model", "bigram", "random"):
            residual += _residual_rows(name, condition, layers, spec)

        model_dir = run_dir / "models" / name
        model_dir.mkdir(parents=True, exist_ok=True)
        write_json(
            {
                "name": name,
                "source": "embedded",
                "parameters": masked + 2 * 512 * d,
                # pretraining's own numbers (its eval subset): the report shows the evaluate
                # stage's, on the run's eval sequences, as for every model
                "final_eval_loss": 3.9,
                "bigram_baseline": {"cross_entropy": 4.4, "alpha": 0.1, "n_predictions": 100},
            },
            model_dir / "model.json",
        )
        for target, labels in cfg.lambdas.model_dump().items():
            for label in labels or []:  # None: a target not configured
                kept = {**spec.sweep, **spec.optimal}.get(label, (0.1,))[0]
                trained = label not in ("neginf", "inf")
                attempts = (
                    [{"attempt": i, **_history(40, kept)} for i in range(2)] if trained else []
                )
                log_file = run_dir / "masks" / name / target / f"lambda-{label}.json"
                log_file.parent.mkdir(parents=True, exist_ok=True)
                write_json({"history": attempts, "attempts": len(attempts)}, log_file)

    metrics = run_dir / "metrics"
    _parquet(metrics / "masks.parquet", masks, A.MASK_METRICS.schema)
    _parquet(metrics / "blocks.parquet", blocks)
    _parquet(metrics / "overlap.parquet", overlap, A.OVERLAP.schema)
    _parquet(metrics / "overlap_null.parquet", null, A.OVERLAP_NULL.schema)
    _parquet(metrics / "ablations.parquet", ablations)
    _parquet(metrics / "generations.parquet", generations)
    _parquet(metrics / "residual.parquet", residual, A.RESIDUAL.schema)
    # no bootstrap replicates: the verdicts compare the marginal intervals
    _parquet(metrics / "masks_replicates.parquet", [], A.MASK_REPLICATES.schema)
    if cfg.checkpoints is not None:
        _write_checkpoints(metrics, cfg, spec)
        _parquet(metrics / "checkpoints_replicates.parquet", [], A.CHECKPOINT_REPLICATES.schema)
        _parquet(metrics / "controls_replicates.parquet", [], A.CONTROL_REPLICATES.schema)
    write_json(selection, run_dir / "selection.json")
    data_dir.mkdir(parents=True, exist_ok=True)
    counted = spec.bigram_tokens
    bigram_info = {"vocab_size": 512, "n_sequences": counted // 32, "n_tokens": counted}
    write_json({**bigram_info, "seq_len": 32}, data_dir / "bigrams.json")
    splits = {"train": {"sequences": 100}, "eval": {"sequences": 20}}
    write_json({"seq_len": 32, "splits": splits}, data_dir / "tokens.json")
    return run_dir, data_dir


def _write_checkpoints(metrics: Path, cfg: Config, spec: Spec) -> None:
    assert cfg.checkpoints is not None
    rows = []
    for model in cfg.checkpoints.models:
        masked = 12 * cfg.models[model].layers * cfg.models[model].d_model ** 2  # type: ignore[union-attr]
        for i, step in enumerate(CHECKPOINT_STEPS):
            base = {"model": model, "step": step, "budget": None}
            masks = {("reference", "neginf"): (masked, spec.checkpoint_full_r[i])}
            for j, label in enumerate(cfg.checkpoints.lambdas):
                masks[("bigram", label)] = (masked // (2 + 5 * j), 0.9 - 0.05 * j - 0.1 / (1 + i))
            for (target, label), (kept, r) in masks.items():
                values = {
                    "kept": kept,
                    "kept_fraction": kept / masked,
                    **_interval("bigram_r", r, spec),
                    "unseen_fraction": spec.unseen,
                }
                if target == "bigram":
                    values |= {
                        "first_mlp_share": 0.3 + 0.05 * i,
                        "mlp_share": 0.8,
                        "first_mlp_plurality": spec.checkpoint_plurality[i],
                    }
                for metric, value in values.items():
                    rows.append(
                        {
                            **base,
                            "target": target,
                            "lambda": label,
                            "lambda_value": lambda_value(label),
                            "metric": metric,
                            "value": value,
                        }
                    )
            for budget, series in spec.r_at_budget.items():
                fit = {**base, "target": None, "lambda": None, "lambda_value": None}
                for metric, value in _interval("r_at_budget", series[i], spec).items():
                    rows.append({**fit, "budget": budget, "metric": metric, "value": value})
                rows.append(
                    {
                        **fit,
                        "budget": budget,
                        "metric": "r_at_budget_extrapolated",
                        "value": float(budget > 1000),
                    }
                )
    _parquet(metrics / "checkpoints.parquet", rows, A.CHECKPOINTS.schema)
    controls = [
        {"model": model, "control": control, "lambda": "0", "metric": metric, "value": value}
        for model in cfg.checkpoints.models
        for control, r in spec.controls.items()
        for metric, value in (
            *_interval("bigram_r", r, spec).items(),
            ("unseen_fraction", spec.unseen),
        )
    ]
    _parquet(metrics / "controls.parquet", controls, A.CONTROLS.schema)


def _benchmark(path: Path, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:01\t100.5\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cfg() -> Config:
    return validate_config(copy.deepcopy(RAW_CONFIG))


def report_inputs(cfg: Config, root: Path = Path()) -> dict[str, Any]:
    """The report stage's inputs and outputs by name, as the registry gives them (under root)."""
    fields = job_fields(cfg, {})
    return {
        name: [root / p for p in port.paths(cfg, fields)]
        if port.each is not None
        else root / port.paths(cfg, fields)[0]
        for name, port in STAGES["report"].ports(cfg).items()
    }


def report_argv(cfg: Config, config_file: str) -> list[str]:
    """`bsn report` as the front-ends call it."""
    stage = STAGES["report"]
    return [stage.command, "--config", config_file, *arguments(stage, cfg, job_fields(cfg, {}))]


def _verdicts_with_flags(
    root: Path, cfg: Config, spec: Spec, flagged: set[tuple[int, int]]
) -> dict[str, tuple[str, str]]:
    """`_verdicts`, with exactly the (budget, step) estimates in `flagged` extrapolated."""
    write_run(root, cfg, spec)
    path = root / "results" / cfg.run / "metrics" / "checkpoints.parquet"
    table = pa.parquet.read_table(path).to_pylist()
    for row in table:
        if row["metric"] == "r_at_budget_extrapolated":
            row["value"] = float((row["budget"], row["step"]) in flagged)
    _parquet(path, table, A.CHECKPOINTS.schema)
    tables = load_run(cfg, report_inputs(cfg, root))
    models = summarise(tables)
    found = verdicts(Evidence(models, summarise_checkpoints(tables), control_values(tables)))
    return {v.key: (v.status, v.ours) for v in found}


def _verdicts(root: Path, cfg: Config, spec: Spec) -> dict[str, tuple[str, str]]:
    write_run(root, cfg, spec)
    tables = load_run(cfg, report_inputs(cfg, root))
    models = summarise(tables)
    found = verdicts(Evidence(models, summarise_checkpoints(tables), control_values(tables)))
    return {v.key: (v.status, v.ours) for v in found}


@dataclass(frozen=True)
class Built:
    root: Path
    report_dir: Path
    metrics_json: Path
    html: str


@pytest.fixture(scope="module")
def built(cfg: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """The synthetic run's report, made through `bsn report` from the run's root folder."""
    root = tmp_path_factory.mktemp("report")
    run_dir, _ = write_run(root, cfg, Spec())
    _benchmark(run_dir / "benchmarks" / "evaluate.tsv", 12.5)
    _benchmark(run_dir / "benchmarks" / "train_mask" / "tiny-a-bigram-0.tsv", 3.0)
    _benchmark(run_dir / "benchmarks" / "train_mask" / "tiny-a-bigram-1.tsv", 4.0)
    _benchmark(root / STAGES["corpus"].benchmark(cfg).format(**job_fields(cfg, {})), 2.0)
    config_file = root / "config.yaml"
    config_file.write_text(yaml.safe_dump(RAW_CONFIG), encoding="utf-8")
    report_dir, metrics_json = run_dir / "report", run_dir / "metrics.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        code = main(report_argv(cfg, "config.yaml"))
    assert code == 0
    yield Built(root, report_dir, metrics_json, (report_dir / "index.html").read_text("utf-8"))


# ------------------------------------------------------------------------- outputs


def test_the_subtitle_counts_train_sequences_apart_from_the_bigram_statistics(
    cfg: Config, tmp_path: Path
) -> None:
    for counted, expected in [
        (3200, "100 train sequences of 32 tokens (3,200 tokens), 20 eval sequences"),
        (
            320_000,
            "100 train sequences of 32 tokens (3,200 tokens), bigram statistics over 320,000 "
            "tokens, 20 eval sequences",
        ),
    ]:
        root = tmp_path / str(counted)
        write_run(root, cfg, Spec(bigram_tokens=counted))
        tables = load_run(cfg, report_inputs(cfg, root))
        assert expected in run_subtitle(cfg, tables, 2)


def test_every_figure_is_a_png_embedded_once_with_its_caption(cfg: Config, built: Built) -> None:
    names = A.figure_names(cfg.checkpoints is not None)
    # checkpoints included (the config has the section); ngrams needs two n-gram orders
    assert names == [name for name in A.REPORT_FIGURES if name != "ngrams"]
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', built.html)
    assert len(embedded) == len(names) == built.html.count("<img")
    for name, data in zip(names, embedded, strict=True):
        png = (built.report_dir / "figures" / f"{name}.png").read_bytes()
        assert png.startswith(PNG_SIGNATURE)
        assert base64.b64decode(data) == png
        assert f"<b>{name}</b>: {escape(A.REPORT_FIGURES[name])}" in built.html
    assert sorted(p.name for p in (built.report_dir / "figures").iterdir()) == sorted(
        f"{n}.png" for n in names
    )


def test_html_is_self_contained_and_escapes_generated_text(built: Built) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", built.html)
    assert "http://" not in built.html and "https://" not in built.html
    assert "<script" not in built.html and "<link" not in built.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more\\n\\n\\n" in built.html
    for section in (
        "Answers at a glance",
        "Summary per model",
        "Comparison with the paper",
        "Generations",
        "Cost per stage",
        "Versions",
        "Configuration",
    ):
        assert f"<h2>{section}</h2>" in built.html
    assert "gpt_neox.layers.&lt;l&gt;.attention.query_key_value.weight" in built.html
    assert "run: synthetic" in built.html  # the config's YAML dump


def test_the_comparison_shows_each_claim_on_one_line_with_its_details(built: Built) -> None:
    html = built.html
    section = html[html.index("<h2>Comparison with the paper</h2>") :]
    section = section[: section.index("<h2>", 10)]
    claims = re.findall(r"<details>\n(.*?)</details>", section, re.S)
    assert len(claims) == 18  # one per claim of the registry
    for claim in claims:
        line = claim[: claim.index("</summary>")]
        # claim | paper | this run | verdict: four cells, badges with their words
        assert len(re.findall(r'<span class="(claim|side|verdict)"', line)) == 4
        assert re.search(r'<span class="verdict"><span class="badge \w+">. [a-z ]+</span>', line)
        assert "Rule</h4>" in claim and "Not resolved when</h4>" in claim
        assert "<h4>This run, per model</h4>" in claim and "the same rule on its numbers" in claim
    one = next(c for c in claims if "reach r &gt; 0.95" in c)
    line, more = one.split("</summary>")
    assert '<span class="badge fails">✗ does not hold</span>' in line  # the run: 0.900
    assert '<span class="badge holds">✓ holds</span> 8 models' in line  # the paper's side
    assert '<span class="mark fails" title="does not hold">✗ tiny-a</span>' in line
    # every threshold says where its value comes from; every r shows its interval
    assert "<b>r level = 0.95</b>: §3.2" in more
    fails = '<span class="badge fails">✗ does not hold</span>'
    assert f"<li><b>tiny-a</b> {fails} best 0.900 [0.895, 0.905]" in more
    assert '<li><b>Pythia 70M</b> <span class="badge holds">✓ holds</span> best 0.961' in more
    overlap = next(c for c in claims if "overlap far more" in c)
    assert "overlap ratio = 3.8</b>: the paper&#x27;s &#x27;3.8–15.3× chance&#x27;" in overlap
    assert "Pythia 160M" in overlap
    statuses = re.findall(r'<span class="verdict"><span class="badge (\w+)">', section)
    assert statuses.count("holds") >= 10
    assert {"unmeasured", "descriptive"} <= set(statuses)  # the ~10M plateau; λ = 0 keeps half
    assert "<td>" not in section  # no wall-of-text table
    markdown = (built.report_dir / "summary.md").read_text("utf-8")
    assert "## Comparison with the paper" in markdown
    assert "| claim | paper | this run | verdict |" in markdown
    assert "| Bigram subnetworks reach r > 0.95 (§3.2, claim 1) | holds (8 models) |" in markdown
    assert "- This run, tiny-a: does not hold; best 0.900 [0.895, 0.905]" in markdown
    assert "](figures/sparsity_r.png)" in markdown and "data:image" not in markdown


def test_wide_tables_scroll_in_their_own_box_and_the_summary_is_per_model(built: Built) -> None:
    html = built.html
    assert html.count('<div class="scroll"><table>') == html.count("<table>") >= 5
    summary = html[html.index("<h2>Summary per model</h2>") :]
    summary = summary[: summary.index("</table>")]
    assert "<th>quantity</th><th>tiny-a</th><th>tiny-b</th>" in summary
    assert '<td>full-model r</td><td class="num">0.700 [0.695, 0.705]</td>' in summary
    assert "max-width: 100%" in html and '<meta name="viewport"' in html


def test_costs_are_summed_per_stage_and_missing_ones_are_not_measured(built: Built) -> None:
    html = built.html
    costs = html[html.index("<h2>Cost per stage</h2>") :]
    costs = costs[: costs.index("</table>")]
    assert '<td>train_mask</td><td class="num">2</td><td class="num">7.0</td>' in costs
    assert '<td>evaluate</td><td class="num">1</td><td class="num">12.5</td>' in costs
    assert '<td>corpus</td><td class="num">1</td><td class="num">2.0</td>' in costs
    assert '<td>ablate</td><td class="num">0</td><td class="num">not measured</td>' in costs
    assert '<td>total</td><td class="num">4</td><td class="num">21.5</td>' in costs


def test_metrics_json_holds_finite_headline_numbers(cfg: Config, built: Built) -> None:
    def refuse(constant: str) -> None:
        raise AssertionError(f"non-finite number {constant} in metrics.json")

    metrics = json.loads(built.metrics_json.read_text("utf-8"), parse_constant=refuse)
    assert list(metrics) == ["checkpoints", "claims", "models"]
    assert list(metrics["models"]) == list(cfg.models)
    model = metrics["models"]["tiny-a"]
    assert model["full_model_r"] == pytest.approx(0.70)
    assert model["lambda0_r"] == pytest.approx(0.90)
    assert model["selected_lambda"] == "1e1"
    assert model["selected_kept_fraction"] == pytest.approx(0.05, abs=1e-3)
    assert model["selected_r"] == pytest.approx(0.87)
    assert model["overlap_row_ratio"] == pytest.approx(8.0)  # the paper's (row-shuffle) null
    assert model["overlap_ratio"] == pytest.approx(12.0)  # the uniform within-block null
    assert model["full_model_r_interval"] == {
        "low": pytest.approx(0.695),
        "high": pytest.approx(0.705),
    }
    assert model["unseen_fraction"] == 0.0
    assert model["eval_loss"] == 4.0 and model["bigram_baseline_loss"] == 4.5
    assert model["ablation_surprisal_bits"]["random_removed"] == pytest.approx(5.95)
    assert model["rotation_layer1_to_input"]["random"] == pytest.approx(6.0)
    steps = metrics["checkpoints"]["tiny-b"]
    assert list(steps) == sorted(f"step_{s}" for s in CHECKPOINT_STEPS)
    assert steps["step_1209"]["r_at_1000"] == pytest.approx(0.86)
    assert sum(metrics["claims"].values()) == 18
    assert metrics["claims"]["descriptive"] == 1

    def leaves(node: Any) -> Iterator[Any]:
        for value in node.values():
            yield from leaves(value) if isinstance(value, dict) else [value]

    for value in leaves(metrics):
        assert isinstance(value, str) or (isinstance(value, int | float) and math.isfinite(value))


def test_figures_are_reproducible(cfg: Config, built: Built) -> None:
    tables = load_run(cfg, report_inputs(cfg, built.root))
    data = FigureData(tables, summarise(tables), summarise_checkpoints(tables))
    with figure_style():
        for name in ("ablations", "overlap"):
            png = png_bytes(BUILDERS[name](data))
            assert png == (built.report_dir / "figures" / f"{name}.png").read_bytes()


def test_the_claims_figure_puts_the_paper_and_the_run_on_one_axis(
    cfg: Config, built: Built
) -> None:
    from bigram_subnetworks.report.claims import HIGH_R, OVERLAP_RATIO, SPARSE
    from bigram_subnetworks.report.paper import paper_evidence

    tables = load_run(cfg, report_inputs(cfg, built.root))
    data = FigureData(tables, summarise(tables), summarise_checkpoints(tables))
    with figure_style():
        figure = BUILDERS["claims"](data)
    r_axis, kept_axis, overlap_axis = figure.axes
    labels = [t.get_text() for t in r_axis.get_yticklabels()]
    assert labels == [f"paper: {s.model}" for s in paper_evidence().models] + ["tiny-a", "tiny-b"]
    for ax, threshold in ((r_axis, HIGH_R), (kept_axis, SPARSE), (overlap_axis, OVERLAP_RATIO)):
        assert any(list(line.get_xdata()) == [threshold.value] * 2 for line in ax.lines)
    row = labels.index("tiny-a")
    points = sorted(
        float(line.get_xdata()[0])
        for line in r_axis.lines
        if line.get_marker() == "o" and float(line.get_ydata()[0]) == row
    )
    assert points == pytest.approx([0.70, 0.90])  # full-model r, best r
    bars = [c for c in r_axis.collections if len(c.get_segments()) == 1]
    widths = sorted(
        round(float(seg[1][0] - seg[0][0]), 6)
        for c in bars
        for seg in c.get_segments()
        if float(seg[0][1]) == row
    )
    assert widths == pytest.approx([0.01, 0.01])  # the 95% intervals, ± half_width
    kept = [line for line in kept_axis.lines if line.get_marker() == "D"]
    assert any(float(line.get_xdata()[0]) == pytest.approx(0.05, abs=1e-3) for line in kept)
    figure.clear()


def test_snakemake_report_captions_match_the_figures() -> None:
    captions = {p.stem: p.read_text("utf-8") for p in (REPO / "workflow" / "report").glob("*.rst")}
    assert sorted(captions) == sorted(A.REPORT_FIGURES)
    for name, caption in A.REPORT_FIGURES.items():
        assert " ".join(captions[name].split()) == caption


def test_every_declared_figure_has_a_builder_and_nothing_else_does() -> None:
    assert list(BUILDERS) == list(A.REPORT_FIGURES)


# ------------------------------------------------------------------------ verdicts


@pytest.fixture(scope="module")
def paper_like(cfg: Config, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    return _verdicts(tmp_path_factory.mktemp("paper_like"), cfg, Spec())


def test_paper_like_numbers_reproduce_the_paper_claims(
    paper_like: dict[str, tuple[str, str]],
) -> None:
    found = paper_like
    assert found["best_high"][0] == FAILS  # r 0.90 < 0.95: the paper's level is not reached
    assert found["plateau"][0] == NOT_MEASURED  # every mask keeps far fewer than 10M weights
    assert found["lambda0_half"][0] == DESCRIPTIVE  # guaranteed by the initialisation
    assert {k for k, (status, _) in found.items() if status == HOLDS} == set(found) - {
        "best_high",
        "plateau",
        "lambda0_half",
    }
    assert (
        "best 0.900 [0.895, 0.905] vs full model 0.700 [0.695, 0.705]"
        in (found["best_above_full"][1])
    )


FLIPS = {
    "best_above_full": {"full_r": 0.95},
    "best_high": {"sweep": {"0": (0.5, 0.97), "1e1": (0.05, 0.96)}},
    "selected_sparse": {"sweep": {"0": (0.5, 0.90), "1e1": (0.3, 0.87)}},
    "first_mlp": {"first_mlp_share": 0.05},
    "overlap": {"overlap_ratio": 0.9, "overlap_p": 0.7},
    "random_removal": {"surprisal": {**Spec().surprisal, "random removed": 6.8}},
    "bigram_vs_optimal": {"surprisal": {**Spec().surprisal, "optimal removed": 9.0}},
    "rotation": {"rotation_layer1": {"full model": 50.0, "bigram": 12.0, "random": 8.0}},
    "covariance": {"covariance_01": {"full model": 0.3, "bigram": 0.95, "random": 0.9}},
    "random_init": {"controls": {**Spec().controls, "random init": 0.95}},
    "trained_embeddings": {
        "controls": {**Spec().controls, "random body, trained embeddings": 0.77}
    },
    "embeddings_only": {"controls": {**Spec().controls, "embeddings only": 0.85}},
    "linear_map": {"controls": {**Spec().controls, "embeddings + layer-0 linear map": 0.3}},
    "full_r_falls": {"checkpoint_full_r": (0.05, 0.5, 0.6, 0.7)},
    "peaks_later": {"checkpoint_full_r": (0.05, 0.5, 0.9, 0.7)},
    "decompression": {"r_at_budget": {1000: (0.5, 0.8, 0.86, 0.9)}},
}


@pytest.mark.parametrize("key", sorted(FLIPS))
def test_changing_the_data_flips_the_verdict(
    cfg: Config, tmp_path: Path, paper_like: dict[str, tuple[str, str]], key: str
) -> None:
    before = paper_like[key]
    after = _verdicts(tmp_path, cfg, replace(Spec(), **FLIPS[key]))[key]
    expected = HOLDS if key == "best_high" else FAILS
    assert after[0] == expected != before[0], (before, after)
    assert after[1] != before[1]  # the numbers that decided it are shown


# Cases the previous rules could not fail (or called "not measured"): each now does not hold.
CANNOT_FAIL_BEFORE = {
    # the trained embeddings do not raise r, and training does not either (was: not measured)
    "trained_embeddings": {
        "controls": {
            **Spec().controls,
            "bigram subnetwork": 0.74,
            "random init": 0.75,
            "random body, trained embeddings": 0.70,
        }
    },
    # optimal removal lowers surprisal: "bigram ≥ 0.8 × optimal" held vacuously
    "bigram_vs_optimal": {"surprisal": {**Spec().surprisal, "optimal removed": 5.5}},
    # a ratio > 1 with p < 0.05 is not the paper's claim (3.8–15.3×, p < 1e-4)
    "overlap": {"overlap_ratio": 2.0, "overlap_p": 0.001},
    # too few draws to resolve p < 1e-4, however large the ratio
    "overlap_draws": {"overlap_draws": 500, "overlap_p": 1 / 501},
    # plurality in the final mask but not at one checkpoint (was checked on the final mask only)
    "first_mlp": {"checkpoint_plurality": (1.0, 0.0, 1.0, 1.0)},
    # noisy trajectories: the earlier value beats the last by less than the uncertainty
    "full_r_falls": {"checkpoint_full_r": (0.05, 0.686, 0.685, 0.68)},
    "decompression": {"r_at_budget": {1000: (0.5, 0.8, 0.836, 0.83)}},
    # the last checkpoint's estimate is extrapolated: it may not decide
    "decompression_extrapolated": {"r_at_budget": {1000: (0.5, 0.8, 0.86, 0.83)}},
}


@pytest.mark.parametrize("case", sorted(CANNOT_FAIL_BEFORE))
def test_cases_the_old_rules_could_not_fail_now_fail(
    cfg: Config, tmp_path: Path, paper_like: dict[str, tuple[str, str]], case: str
) -> None:
    key = case.split("_draws")[0].split("_extrapolated")[0]
    spec = replace(Spec(), **CANNOT_FAIL_BEFORE[case])
    if case == "decompression_extrapolated":  # budget 1000 extrapolated at the last step only
        spec = replace(spec, r_at_budget={1000: (0.5, 0.8, 0.86, 0.83)})
        found = _verdicts_with_flags(tmp_path, cfg, spec, {(1000, 5000)})[key]
        # no budget decides; the fit-free λ series cannot either (issue 20 item 11)
        assert found[0] == NOT_RESOLVED and "extrapolated, not deciding" in found[1], found
        assert "fit-free" in found[1]
        return
    found = _verdicts(tmp_path, cfg, spec)[key]
    assert paper_like[key][0] == HOLDS
    # where the data cannot decide (issue 20: intervals that straddle, too few draws), the rule
    # says so instead of "does not hold"
    undecidable = case in ("overlap_draws", "full_r_falls", "decompression")
    assert found[0] == (NOT_RESOLVED if undecidable else FAILS), found
    if case == "overlap_draws":
        assert "too few draws to reach p < 0.0001" in found[1]
    if case in ("full_r_falls", "decompression"):
        assert "difference +" in found[1] and "(marginal intervals)" in found[1]


def test_lambda0_half_is_descriptive_whatever_the_data(cfg: Config, tmp_path: Path) -> None:
    for fraction in (0.5, 0.9, 0.05):
        spec = replace(Spec(), sweep={**Spec().sweep, "0": (fraction, 0.9)})
        status, text = _verdicts(tmp_path, cfg, spec)["lambda0_half"]
        assert status == DESCRIPTIVE and f"{fraction:.1%} kept" in text


def test_the_r_level_is_decided_on_the_drop_unseen_r_when_unseen_bigrams_matter(
    cfg: Config, tmp_path: Path
) -> None:
    """With 5% of eval positions unseen the clipped r (0.96) and the drop-unseen r (0.95) differ
    by more than the paper's precision: the drop-unseen r decides, and says so."""
    sweep = {"0": (0.5, 0.96), "1": (0.2, 0.955), "1e1": (0.05, 0.95), "1e2": (0.01, 0.8)}
    clipped = replace(Spec(), sweep=sweep)
    status, text = _verdicts(tmp_path, cfg, clipped)["best_high"]
    assert status == HOLDS and "clipped r (0.00% unseen: negligible)" in text
    unseen = replace(clipped, unseen=0.05)
    status, text = _verdicts(tmp_path, cfg, unseen)["best_high"]
    # drop-unseen 0.95 [0.945, 0.955] contains 0.95: the data cannot decide (issue 20)
    assert status == NOT_RESOLVED, text
    assert "decided on the drop-unseen r (5.00% of eval positions unseen" in text


def test_without_checkpoints_those_claims_are_not_measured(tmp_path: Path) -> None:
    raw = {k: v for k, v in copy.deepcopy(RAW_CONFIG).items() if k != "checkpoints"}
    plain = validate_config(raw)
    assert "checkpoints" not in A.figure_names(plain.checkpoints is not None)
    found = _verdicts(tmp_path, plain, Spec())
    for key in ("random_init", "trained_embeddings", "linear_map", "decompression"):
        assert found[key][0] == NOT_MEASURED
        assert "checkpoints section" in found[key][1]
    assert not (tmp_path / "results" / plain.run / "metrics" / "checkpoints.parquet").exists()


# ----------------------------------------------------------- benchmarks and errors


def _slow_wide(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """wide_metrics by hand: a dict per key, the mean of its metrics' finite values (None where
    there are none), ordered by each key's first appearance, key by key."""
    first: list[dict[Any, int]] = [{} for _ in keys]
    for i, row in enumerate(rows):
        for seen, key in zip(first, keys, strict=True):
            seen.setdefault(row[key], i)
    metrics = list(dict.fromkeys(row["metric"] for row in rows))
    values: dict[tuple[Any, ...], dict[str, list[float]]] = {}
    for row in rows:
        cells = values.setdefault(tuple(row[k] for k in keys), {})
        if row["value"] is not None and not math.isnan(row["value"]):
            cells.setdefault(row["metric"], []).append(row["value"])
        else:
            cells.setdefault(row["metric"], [])
    order = sorted(values, key=lambda key: [seen[v] for seen, v in zip(first, key, strict=True)])
    return [
        {
            **dict(zip(keys, key, strict=True)),
            **{
                m: (sum(values[key][m]) / len(values[key][m]) if values[key].get(m) else None)
                for m in metrics
            },
        }
        for key in order
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.one_of(st.none(), st.sampled_from(["0", "1e1", "inf"])),
            st.sampled_from(["bigram_r", "kept", "lm_loss"]),
            st.one_of(st.none(), st.just(math.nan), st.integers(-50, 50).map(float)),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_wide_metrics_pivots_like_a_dict_of_means(entries: list[tuple[Any, ...]]) -> None:
    """The report's one pivot (tidy metric rows to a column per metric), against a plain-Python
    version: rows in each key's order of first appearance, means without NaN or missing values,
    metric columns in order of first appearance."""
    from bigram_subnetworks.report.tables import wide_metrics  # (benchmarks import this module)

    rows = [
        {"model": m, "lambda": label, "metric": metric, "value": value}
        for m, label, metric, value in entries
    ]
    schema = {"model": pl.String, "lambda": pl.String, "metric": pl.String, "value": pl.Float64}
    wide = wide_metrics(pl.DataFrame(rows, schema=schema), ["model", "lambda"])
    expected = _slow_wide(rows, ["model", "lambda"])
    assert wide.columns == ["model", "lambda", *dict.fromkeys(r["metric"] for r in rows)]
    found = wide.to_dicts()
    assert [(r["model"], r["lambda"]) for r in found] == [
        (r["model"], r["lambda"]) for r in expected
    ]
    for got, want in zip(found, expected, strict=True):
        assert got.keys() == want.keys()
        for column, value in want.items():
            assert got[column] == (pytest.approx(value) if isinstance(value, float) else value)


def test_plot_csv_cells_are_written_as_pandas_to_csv_wrote_them() -> None:
    """DVC's plot tables: floats to 6 significant digits, missing values empty, ints and strings
    as they are, quoted only when they hold a comma or a quote."""
    from bigram_subnetworks.report.build import csv_text  # (benchmarks import this module)

    frame = pl.DataFrame(
        {
            "model": ["tiny", 'odd,"name"'],
            "step": [0, 1200],
            "kept": [12345678.0, None],
            "r": [0.123456789, math.nan],
            "edge": [-0.0, math.inf],
        }
    )
    assert csv_text(frame) == (
        'model,step,kept,r,edge\ntiny,0,1.23457e+07,0.123457,-0\n"odd,""name""",1200,,,inf\n'
    )


def test_benchmark_files_name_their_stage(cfg: Config, tmp_path: Path) -> None:
    assert benchmark_stage(Path("results/x/benchmarks/evaluate.tsv")) == "evaluate"
    assert benchmark_stage(Path("results/x/benchmarks/train_mask/m-bigram-0.tsv")) == "train_mask"
    assert benchmark_stage(Path("data/toy/logs/corpus.benchmark.tsv")) == "corpus"
    run_dir = tmp_path / "results" / "synthetic"
    tokenize = STAGES["tokenize"].benchmark(cfg).format(**job_fields(cfg, {}))
    files = [
        _benchmark(run_dir / "benchmarks" / "pretrain" / "tiny-a.tsv", 10.0),
        _benchmark(tmp_path / tokenize, 1.5),
        tmp_path / "missing.tsv",
    ]
    (run_dir / "benchmarks" / "broken.tsv").write_text("not a benchmark\n", encoding="utf-8")
    expected = benchmark_files(cfg)
    assert Path(tokenize) in expected
    assert Path("results/synthetic/benchmarks/pretrain/tiny-a.tsv") in expected
    assert Path("results/synthetic/benchmarks/evaluate.tsv") in expected
    assert {benchmark_stage(path) for path in expected} == {
        stage.name for stage in stages_for(cfg, "snakemake")
    }
    files.append(run_dir / "benchmarks" / "broken.tsv")
    costs = {row["stage"]: row for row in stage_costs(cfg, read_benchmarks(files)).to_dicts()}
    assert costs["pretrain"]["seconds"] == 10.0 and costs["tokenize"]["jobs"] == 1
    assert costs["evaluate"]["jobs"] == 0 and math.isnan(costs["evaluate"]["seconds"])
    assert stage_costs(cfg, read_benchmarks(None))["jobs"].sum() == 0


def test_a_missing_table_is_a_one_line_error_naming_it(
    cfg: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = write_run(tmp_path, cfg, Spec())
    (run_dir / "metrics" / "residual.parquet").unlink()
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(RAW_CONFIG), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        code = main(report_argv(cfg, str(config_file)))
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 1 and len(errors) == 1 and "residual.parquet: file not found" in errors[0]
    assert not (run_dir / "report").exists() and not (run_dir / "metrics.json").exists()
