"""The paper's reported numbers, and the paper as evidence.

Every number comes from `paper_numbers.yaml` (beside this module, shipped as package data), the one
place they are written, with the section, table or figure that reports them. `paper_evidence()`
turns them into the same dataclasses a run's tables become (`report.summary`), so the verdict
functions of `report.claims` can be run on the paper itself: a claim whose rule does not hold on
the paper's own numbers has a wrong rule.

What the paper does not report stays missing (NaN, None, empty): it gives no bootstrap intervals
(so its estimates have none), no unseen-bigram fraction, no ablation losses, no random-subnetwork
rotations or covariance values and no full-model r across checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import polars as pl
import yaml

from bigram_subnetworks.report.summary import CheckpointSummary, Estimate, ModelSummary

NUMBERS_FILE = "paper_numbers.yaml"


@cache
def paper_numbers() -> dict[str, Any]:
    """The parsed `paper_numbers.yaml`."""
    text = resources.files("bigram_subnetworks.report").joinpath(NUMBERS_FILE).read_text("utf-8")
    return yaml.safe_load(text)


def where(section: str) -> str:
    """Where the paper reports a section of `paper_numbers.yaml`."""
    return str(paper_numbers()[section]["where"])


def _rows(section: str) -> dict[str, dict[str, Any]]:
    """A tabular section as {model: {column: value}}."""
    entry = paper_numbers()[section]
    return {
        model: dict(zip(entry["columns"], values, strict=True))
        for model, values in entry["models"].items()
    }


def stated(name: str) -> tuple[float, str]:
    """A threshold the paper states in words (section `stated`): its value and where."""
    entry = paper_numbers()["stated"][name]
    return float(entry["value"]), str(entry["where"])


@dataclass(frozen=True)
class PaperEvidence:
    """The paper's numbers as evidence (see `report.claims.Evidence`)."""

    models: list[ModelSummary]
    checkpoints: list[CheckpointSummary]
    controls: dict[str, dict[str, Estimate]]


def _model(name: str) -> ModelSummary:
    numbers = paper_numbers()
    masked = int(numbers["masked_weights"]["models"].get(name, 0))
    fields: dict[str, Any] = {"model": name, "masked_weights": masked}
    estimates: dict[str, Estimate] = {}
    best = _rows("best_r").get(name)
    if best:
        fields |= {"best_r": best["best_r"], "full_model_r": best["full_model_r"]}
        estimates |= {
            "best_r": Estimate(best["best_r"]),
            "full_model_r": Estimate(best["full_model_r"]),
        }
    sweep: list[tuple[float, Estimate]] = []
    selected = _rows("selected").get(name)
    if selected:
        fields |= {
            "selected_lambda": str(selected["lambda"]),
            "selected_kept": int(selected["active"]),
            "selected_kept_fraction": selected["active"] / selected["total"],
            "selected_r": selected["r"],
        }
        estimates["selected_r"] = Estimate(selected["r"])
        sweep.append((float(selected["active"]), Estimate(selected["r"])))
    half = float(numbers["lambda0_kept_fraction"]["value"])
    fields["lambda0_kept_fraction"] = half
    table2 = numbers["controls"]["models"].get(name)
    if table2:
        fields["lambda0_r"] = table2["bigram subnetwork"]
        estimates["lambda0_r"] = Estimate(table2["bigram subnetwork"])
        estimates["empty_r"] = Estimate(table2["embeddings only"])
        # The λ = 0 mask: about half of the masked weights (§A.3), at Table 2's r.
        sweep.append((half * masked, Estimate(table2["bigram subnetwork"])))
    overlap = _rows("overlap").get(name)
    if overlap:
        draws = int(numbers["overlap"]["draws"])
        fields |= {
            "overlap_observed": overlap["overlap"],
            "overlap_row_expected": overlap["expected"],
            "overlap_row_ratio": overlap["ratio"],
            # none of the draws reached the observed overlap: p = 1 / (draws + 1) with the +1
            # correction this project uses, below the paper's stated bound of 1e-4
            "overlap_row_p": 1.0 / (draws + 1),
            "overlap_draws": draws,
            "overlap_share": overlap["share_in_optimal"],
            "optimal_kept_fraction": overlap["optimal_kept"],
        }
    location = numbers["location"]
    final = location["final"].get(name)
    if final:
        fields |= {"mlp_share": final["MLP"], "attention_share": final["attention"]}
    if name in location["plurality_at_every_checkpoint"]:
        fields |= {"first_mlp_is_plurality": True, "largest_group": "layer 0 MLP"}
    rotations = numbers["rotations"]["models"].get(name, {})
    fields["rotation_to_input"] = {
        condition: dict(enumerate(values["to input"])) for condition, values in rotations.items()
    }
    fields["rotation_to_output"] = {
        condition: dict(enumerate(values["to output"])) for condition, values in rotations.items()
    }
    return ModelSummary(**fields, estimates=estimates, sweep=sorted(sweep, key=lambda p: p[0]))


def _checkpoints(name: str) -> CheckpointSummary | None:
    numbers = paper_numbers()
    steps = numbers["checkpoint_steps"]["models"].get(name)
    if steps is None:
        return None
    plurality: dict[str, dict[int, bool | None]] = {}
    if name in numbers["location"]["plurality_at_every_checkpoint"]:
        label = _rows("selected")[name]["lambda"]
        plurality[str(label)] = dict.fromkeys((int(s) for s in steps), True)
    budgets = numbers["r_at_budget"]["models"].get(name, {})
    return CheckpointSummary(
        model=name,
        steps=[int(s) for s in steps],
        r_at_budget={
            int(budget): {int(step): Estimate(float(r)) for step, r in series.items()}
            for budget, series in budgets.items()
        },
        plurality=plurality,
    )


@cache
def paper_evidence() -> PaperEvidence:
    """The paper's numbers as evidence of the same form as a run's."""
    numbers = paper_numbers()
    names = list(
        dict.fromkeys(
            [
                *numbers["best_r"]["models"],
                *numbers["selected"]["models"],
                *numbers["controls"]["models"],
                *numbers["overlap"]["models"],
            ]
        )
    )
    checkpoints = [c for c in map(_checkpoints, numbers["checkpoint_steps"]["models"]) if c]
    controls = {
        model: {control: Estimate(float(r)) for control, r in values.items()}
        for model, values in numbers["controls"]["models"].items()
    }
    return PaperEvidence([_model(name) for name in names], checkpoints, controls)


# ------------------------------------------------------------------------------ helpers


def _span(values: list[float], fmt: str = ".3f") -> str:
    low, high = min(values), max(values)
    return f"{low:{fmt}}" if low == high else f"{low:{fmt}}–{high:{fmt}}"


def scale_note(models: list[ModelSummary]) -> str:
    """How the run's models compare in size with the paper's (masked weights)."""
    ours = [s.masked_weights for s in models if s.masked_weights > 0]
    if not ours:
        return "The run has no masked weights to compare with the paper's models."
    masked = paper_numbers()["masked_weights"]["models"]
    smallest, largest = min(masked.values()), max(masked.values())
    ours_text = f"{min(ours):,}" if min(ours) == max(ours) else f"{min(ours):,}–{max(ours):,}"
    if max(ours) >= smallest:
        return (
            f"The models here have {ours_text} masked weights; the paper's have "
            f"{smallest:,}–{largest:,}."
        )
    return (
        f"The models here have {ours_text} masked weights, {smallest / max(ours):,.0f}× fewer "
        f"than the paper's smallest (Pythia 70M, {smallest:,}); thresholds tuned on 70M–1B "
        "models need not carry over."
    )


def side_by_side(models: list[ModelSummary]) -> pl.DataFrame:
    """Key quantities: the paper's range next to this run's range."""
    paper = paper_evidence().models

    def span(summaries: list[ModelSummary], attribute: str, fmt: str) -> str:
        values = [float(getattr(s, attribute)) for s in summaries]
        finite = [v for v in values if math.isfinite(v)]
        return _span(finite, fmt) if finite else "not measured"

    rows = [
        ("full-model bigram r", "full_model_r", ".3f", where("best_r")),
        ("best bigram-mask r", "best_r", ".3f", where("best_r")),
        ("λ = 0 kept fraction", "lambda0_kept_fraction", ".1%", where("lambda0_kept_fraction")),
        ("selected kept fraction", "selected_kept_fraction", ".2%", where("selected")),
        ("selected r", "selected_r", ".3f", where("selected")),
        ("overlap ratio, row-shuffle null", "overlap_row_ratio", ".2f", where("overlap")),
        ("overlap ratio, uniform null", "overlap_ratio", ".2f", "not reported"),
        ("share of the bigram mask inside the optimal", "overlap_share", ".1%", where("overlap")),
        ("unseen eval bigrams", "unseen_fraction", ".2%", "not reported"),
    ]
    table = [
        {
            "quantity": name,
            "paper": span(paper, attribute, fmt),
            "where": source,
            "this run": span(models, attribute, fmt),
        }
        for name, attribute, fmt, source in rows
    ]
    return pl.DataFrame(
        table, schema=dict.fromkeys(["quantity", "paper", "where", "this run"], pl.String)
    )
