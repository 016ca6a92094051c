"""The paper's claims, each declared once with the rule that decides it, and their verdicts.

A claim is a check function registered with `@claim(...)`: its key, the claim in words, where the
paper makes it, the rule in words and the thresholds the rule uses, each `Threshold` saying where
its value comes from. A check reads one subject of the evidence (a model's summary, a model's
Table 2 controls or a checkpoint trajectory) and returns (passed, the numbers that decided);
`verdicts` runs every claim on a run's evidence and on the paper's own numbers
(`report.paper.paper_evidence`), which share one form.

Verdicts: "holds" when the rule passes for every subject where it could be measured, "does not
hold" when it fails for one or more, "not measured" when there is no data for it, and
"descriptive" for a number the report shows but does not test (`lambda0_half`: the mask logits
start at σ(0) = 0.5, so about half kept at λ = 0 says more about the initialisation than about
bigram subnetworks).

Uncertainty: every comparison of two r values uses their bootstrap intervals (over eval sequences,
95%): "A above B" needs A's lower bound above B's upper bound, and the text states that margin. A
threshold on one r needs the interval on the right side of it. The paper gives no intervals, so
its values count as exact. Power-law estimates outside a checkpoint's fitted range of active
parameters (extrapolated) are shown, flagged, and never decide.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bigram_subnetworks.analysis.scoring import CI_LEVEL
from bigram_subnetworks.config import lambda_value
from bigram_subnetworks.report.paper import paper_evidence, paper_numbers, stated, where
from bigram_subnetworks.report.summary import (
    NEGLIGIBLE_CLIPPING,
    CheckpointSummary,
    Estimate,
    ModelSummary,
)

HOLDS = "holds"
FAILS = "does not hold"
NOT_MEASURED = "not measured"
DESCRIPTIVE = "descriptive"
STATUSES = (HOLDS, FAILS, NOT_MEASURED, DESCRIPTIVE)

# ------------------------------------------------------------------------ thresholds


@dataclass(frozen=True)
class Threshold:
    """A number a rule compares against, and where its value comes from."""

    name: str
    value: float
    source: str

    def describe(self) -> str:
        value = f"{self.value:,.0f}" if abs(self.value) >= 1000 else f"{self.value:g}"
        return f"{self.name} = {value}: {self.source}"


_OVERLAP = paper_numbers()["overlap"]
INTERVALS = Threshold(
    "interval level",
    CI_LEVEL,
    "percentile bootstrap over eval sequences; two r differ when their intervals do not overlap "
    "(the paper gives no intervals)",
)
HIGH_R = Threshold("r level", *stated("high_r"))
R_PRECISION = Threshold(
    "negligible clipping",
    NEGLIGIBLE_CLIPPING,
    "the unseen-bigram fraction counts as negligible when the clipped and the drop-unseen r "
    "agree to half a unit of the third decimal, the precision the paper reports r to; otherwise "
    "the drop-unseen r decides (the paper counts bigrams over 1.28B tokens: few unseen)",
)
SPARSE = Threshold("sparse", *stated("sparse_fraction"))
PLATEAU_ACTIVE = Threshold("plateau size", *stated("plateau_active"))
PLATEAU_SHARE = Threshold(
    "plateau gain",
    0.10,
    "share of the r range (empty mask → best mask) that masks above 10M active add. On the "
    "paper's own masks on both sides of 10M (Table 1's selected mask, Table 2's λ = 0 mask at "
    "about half of the weights, Table 2's empty mask) it is 1.7% (Pythia 160M), 7.8% (Pythia "
    "1B), 8.1% (GPT-2 small*), the last two from masks far below 10M; the paper calls this "
    "level. The previous rule (an absolute 0.01) failed Pythia 160M's 0.011",
)
OVERLAP_RATIO = Threshold(
    "overlap ratio",
    float(_OVERLAP["text_range"][0]),
    f"the paper's '{_OVERLAP['text_range'][0]}–{_OVERLAP['text_range'][1]}× chance' "
    f"({where('overlap')}; Table 3's smallest: Pythia 160M, 3.81×), under the row-shuffle null "
    "its numbers come from (the authors' code)",
)
OVERLAP_P = Threshold(
    "overlap p",
    float(_OVERLAP["p_below"]),
    f"Table 3: none of {_OVERLAP['draws']:,} null pairs reached the real overlap, p < "
    f"{_OVERLAP['p_below']:g}; a run whose draws cannot resolve it (1/(draws + 1) ≥ "
    f"{_OVERLAP['p_below']:g}) cannot pass",
)
RANDOM_REMOVAL = Threshold(
    "random removal share",
    0.2,
    "ours: 'almost no effect' (§6.3, Figure 5 right; the paper gives no loss values)",
)
ABOUT_AS_MUCH = Threshold(
    "about as much",
    0.8,
    "ours: 'about as much as, and sometimes more than' (§6.3; no values given): the band is "
    "bigram removal's surprisal increase ≥ 0.8× the optimal removal's (up to 20% less, any "
    "amount more), both removals raising surprisal",
)
ROTATION_FACTOR = Threshold(
    "rotation factor",
    2.0,
    "ours: random subnetworks show 'much less' of the first-layer rotation (§5.1; the paper's "
    "full/bigram layer-1 rotations are 47.0–56.2°, the random ones are only plotted)",
)
ROTATION_MARGIN = Threshold("rotation margin", 10.0, "ours, in degrees, with the factor above")
RESTORED = Threshold(
    "restored share",
    0.8,
    "share of the random-init → trained gap that trained embeddings restore; Table 2: 94–101% "
    "(Pythia 160M 101%, Pythia 1B 99%, GPT-2 small* 94%); 0.8 leaves room for noise",
)
EMBEDDINGS_GAP = Threshold(
    "embeddings gap",
    0.1,
    "ours: embeddings alone 'give low r'; Table 2's gaps to the λ = 0 subnetwork are 0.31–0.66",
)


# ------------------------------------------------------------------------ evidence


@dataclass(frozen=True)
class Evidence:
    """What the checks read: per-model summaries, checkpoint trajectories and the Table 2
    controls (model -> control -> r); a run's or the paper's (`report.paper.PaperEvidence`)."""

    models: list[ModelSummary]
    checkpoints: list[CheckpointSummary]
    controls: dict[str, dict[str, Estimate]]

    def checkpoint(self, model: str) -> CheckpointSummary | None:
        return next((c for c in self.checkpoints if c.model == model), None)


Outcome = tuple[bool | None, str]  # passed (None: not measured), and the numbers that decided


@dataclass(frozen=True)
class Claim:
    """A claim of the paper and the rule that decides it."""

    key: str
    claim: str
    where: str
    rule: str
    thresholds: tuple[Threshold, ...]
    scope: str  # "model", "controls" or "checkpoints": what one check reads
    check: Callable[[Any, Evidence], Outcome]
    descriptive: bool
    paper_note: str  # what the paper says where its numbers cannot be checked


CLAIMS: dict[str, Claim] = {}


def claim(
    key: str,
    text: str,
    section: str,
    rule: str,
    scope: str = "model",
    thresholds: tuple[Threshold, ...] = (),
    descriptive: bool = False,
    paper_note: str = "",
) -> Callable[[Callable[[Any, Evidence], Outcome]], Callable[[Any, Evidence], Outcome]]:
    """Register a check as the claim `key` (see `Claim`)."""

    def register(check: Callable[[Any, Evidence], Outcome]) -> Callable[[Any, Evidence], Outcome]:
        if key in CLAIMS:
            raise ValueError(f"claim {key!r} declared twice")
        CLAIMS[key] = Claim(
            key, text, section, rule, thresholds, scope, check, descriptive, paper_note
        )
        return check

    return register


@dataclass(frozen=True)
class Verdict:
    """One claim: what the paper reports, what this run measured, the rule and the verdict on
    both (`paper_status`: the same rule on the paper's own numbers)."""

    key: str
    claim: str
    where: str
    paper: str
    ours: str
    rule: str
    thresholds: str
    status: str
    paper_status: str


# ------------------------------------------------------------------------ helpers


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def above(a: Estimate, b: Estimate, gap: float = 0.0) -> tuple[bool, float]:
    """Whether a exceeds b by more than `gap` beyond both intervals, and the margin:
    a's lower bound − gap − b's upper bound (positive: holds)."""
    margin = a.bounds()[0] - gap - b.bounds()[1]
    return margin > 0, margin


def _margin(margin: float) -> str:
    return f"margin {margin:+.3f}"


def combine(outcomes: list[tuple[str, bool | None, str]]) -> tuple[str, str]:
    """The verdict over subjects: holds if every measured one passes, does not hold if one
    fails, not measured if none was measured; with each subject's numbers."""
    text = "; ".join(f"{name}: {detail}" for name, _, detail in outcomes) or "no models"
    measured = [passed for _, passed, _ in outcomes if passed is not None]
    if not measured:
        return NOT_MEASURED, text
    held = sum(measured)
    if 0 < held < len(measured):
        text += f" (holds for {held} of {len(measured)})"
    return (HOLDS if held == len(measured) else FAILS), text


def _subjects(scope: str, evidence: Evidence) -> list[tuple[str, Any]] | str:
    """The subjects a scope's check runs on, or why there are none."""
    if scope == "model":
        return [(s.model, s) for s in evidence.models]
    if scope == "controls":
        if not evidence.controls:
            return "no controls (the config has no checkpoints section)"
        return list(evidence.controls.items())
    if not evidence.checkpoints:
        return "no checkpoint analysis (the config has no checkpoints section)"
    return [(c.model, c) for c in evidence.checkpoints]


def evaluate_claim(rule: Claim, evidence: Evidence, measured_only: bool = False) -> tuple[str, str]:
    """(status, text) of one claim on one body of evidence (`measured_only`: the text leaves
    out the subjects without data, as for the paper's numbers)."""
    subjects = _subjects(rule.scope, evidence)
    if isinstance(subjects, str):
        return NOT_MEASURED, subjects
    outcomes = [(name, *rule.check(subject, evidence)) for name, subject in subjects]
    if measured_only:
        outcomes = [outcome for outcome in outcomes if outcome[1] is not None] or outcomes
    status, text = combine(outcomes)
    return (DESCRIPTIVE if rule.descriptive else status), text


def verdicts(evidence: Evidence) -> list[Verdict]:
    """Every claim's verdict on a run, beside the same rule's outcome on the paper's numbers."""
    paper = paper_evidence()
    paper_view = Evidence(paper.models, paper.checkpoints, paper.controls)
    out = []
    for rule in CLAIMS.values():
        status, ours = evaluate_claim(rule, evidence)
        paper_status, paper_text = evaluate_claim(rule, paper_view, measured_only=True)
        if paper_status in (NOT_MEASURED, DESCRIPTIVE) and rule.paper_note:
            paper_text = rule.paper_note
        out.append(
            Verdict(
                rule.key,
                rule.claim,
                rule.where,
                paper_text,
                ours,
                rule.rule,
                "; ".join(t.describe() for t in rule.thresholds),
                status,
                paper_status,
            )
        )
    return out


# ----------------------------------------------------------- existence and size


def deciding_r(s: ModelSummary, name: str) -> tuple[Estimate, str]:
    """The r (estimate `name` or its drop-unseen variant) that matches the paper's regime, and
    which one it is: the drop-unseen r where clipping the unseen bigrams moves r by
    R_PRECISION or more, the clipped r otherwise (and the reported r for the paper)."""
    clipped, dropped = s.estimate(name), s.estimate(name + "_dropinf")
    if not _finite(s.unseen_fraction) or not dropped.measured:
        return clipped, "r as reported" if not _finite(s.unseen_fraction) else "clipped r"
    if s.unseen_fraction == 0 or abs(clipped.value - dropped.value) < R_PRECISION.value:
        return clipped, f"clipped r ({s.unseen_fraction:.2%} unseen: negligible)"
    return dropped, (
        f"drop-unseen r ({s.unseen_fraction:.2%} of eval positions unseen; clipped r "
        f"{clipped.text()})"
    )


@claim(
    "best_above_full",
    "Bigram subnetworks match bigram surprisal better than the full model does",
    "§3.2, Figure 1",
    "the best bigram mask's r interval lies above the full model's (the same r variant as the "
    "r > 0.95 claim)",
    thresholds=(INTERVALS, R_PRECISION),
)
def _best_above_full(s: ModelSummary, evidence: Evidence) -> Outcome:
    best, which = deciding_r(s, "best_r")
    full, _ = deciding_r(s, "full_model_r")
    if not (best.measured and full.measured):
        return None, "no trained bigram mask or no full-model r"
    passed, margin = above(best, full)
    return passed, f"best {best.text()} vs full model {full.text()}, {_margin(margin)} ({which})"


@claim(
    "best_high",
    f"Bigram subnetworks reach r > {HIGH_R.value:g}",
    "§3.2, claim 1",
    f"the best bigram mask's r interval lies above {HIGH_R.value:g}, on the r that matches the "
    "paper's regime (drop-unseen where unseen bigrams are not negligible)",
    thresholds=(HIGH_R, R_PRECISION, INTERVALS),
)
def _best_high(s: ModelSummary, evidence: Evidence) -> Outcome:
    best, which = deciding_r(s, "best_r")
    if not best.measured:
        return None, "no trained bigram mask"
    passed, margin = above(best, Estimate(HIGH_R.value))
    label = s.best_dropinf_lambda if "drop-unseen" in which else s.best_lambda
    lam = f" (λ = {label})" if label else ""
    return passed, f"best {best.text()}{lam}, {_margin(margin)}; decided on the {which}"


@claim(
    "lambda0_half",
    "λ = 0 keeps about half of the masked weights",
    "§A.3",
    "descriptive, not tested: every mask logit starts at σ(0) = 0.5, so without a sparsity "
    "penalty about half are kept by construction",
    descriptive=True,
    paper_note="about 50% of the masked parameters with λ = 0 (§A.3)",
)
def _lambda0_half(s: ModelSummary, evidence: Evidence) -> Outcome:
    if not _finite(s.lambda0_kept_fraction):
        return None, "no λ = 0 mask"
    return None, f"{s.lambda0_kept_fraction:.1%} kept"


@claim(
    "selected_sparse",
    f"The selected subnetwork is sparse (non-empty, < {SPARSE.value:.0%} kept)",
    "Table 1, §A.3",
    f"the selected mask keeps weights and fewer than {SPARSE.value:.0%} of them",
    thresholds=(SPARSE,),
)
def _selected_sparse(s: ModelSummary, evidence: Evidence) -> Outcome:
    if not _finite(s.selected_kept_fraction):
        return None, "no selected mask"
    fraction = s.selected_kept_fraction
    text = f"λ = {s.selected_lambda}: {fraction:.2%} kept, r {s.estimate('selected_r').text()}"
    if s.selected_kept == 0:
        return False, text + " (the selected mask is empty)"
    return fraction < SPARSE.value, text


@claim(
    "plateau",
    "r levels off at about 10M active parameters",
    "§3.2, Figure 1",
    "masks above 10M active add less than 10% of the r range (empty mask → best mask) to the "
    "best mask at or below 10M (upper bound of the gain: intervals)",
    thresholds=(PLATEAU_ACTIVE, PLATEAU_SHARE, INTERVALS),
)
def _plateau(s: ModelSummary, evidence: Evidence) -> Outcome:
    small = [r for kept, r in s.sweep if kept <= PLATEAU_ACTIVE.value and r.measured]
    large = [r for kept, r in s.sweep if kept > PLATEAU_ACTIVE.value and r.measured]
    empty = s.estimate("empty_r")
    if not small or not large:
        side = "≤" if not large else ">"
        return None, f"every mask keeps {side} 10M weights ({s.masked_weights:,} masked in all)"
    if not empty.measured:
        return None, "no empty-mask r to scale the gain"
    best_small = max(small, key=lambda r: r.value)
    best_large = max(large, key=lambda r: r.value)
    best = max(best_small.value, best_large.value)
    spread = best - empty.value
    if spread <= 0:
        return False, f"no mask beats the empty mask's r {empty.text()}"
    gain = best_large.bounds()[1] - best_small.bounds()[0]
    share = gain / spread
    text = (
        f"best ≤ 10M active {best_small.text()}, above 10M {best_large.text()}: gain ≤ "
        f"{gain:.3f} = {share:.1%} of the range from the empty mask's {empty.text()}"
    )
    return share < PLATEAU_SHARE.value, text


# -------------------------------------------------------------------- location


def _checkpoint_label(s: ModelSummary, c: CheckpointSummary) -> str | None:
    """The λ of the checkpoint masks to read: the selected λ, else the nearest trained one."""
    labels = [label for label in c.plurality if lambda_value(label) > 0]
    if not labels or s.selected_lambda is None:
        return None
    if s.selected_lambda in labels:
        return s.selected_lambda
    target = math.log10(max(lambda_value(s.selected_lambda), 1e-12))
    return min(labels, key=lambda label: abs(math.log10(lambda_value(label)) - target))


@claim(
    "first_mlp",
    "The plurality of the subnetwork sits in the first MLP layer, at every checkpoint",
    "§4.2, Figures 2 and 6",
    "layer 0's MLP holds at least as many kept weights as every other layer × {attention, MLP} "
    "group, in the selected mask and in the checkpoint masks of the same (or nearest) λ at every "
    "checkpoint",
)
def _first_mlp(s: ModelSummary, evidence: Evidence) -> Outcome:
    parts: list[str] = []
    passed: list[bool] = []
    if s.first_mlp_is_plurality is not None:
        share = f"layer-0 MLP {s.first_mlp_share:.1%}, " if _finite(s.first_mlp_share) else ""
        parts.append(f"selected mask: {share}largest group {s.largest_group}")
        passed.append(s.first_mlp_is_plurality)
    c = evidence.checkpoint(s.model)
    label = _checkpoint_label(s, c) if c is not None else None
    if c is not None and label is not None:
        flags = {step: flag for step, flag in c.plurality[label].items() if flag is not None}
        failing = [step for step, flag in flags.items() if not flag]
        text = f"plurality at {len(flags) - len(failing)} of {len(flags)} checkpoints (λ = {label})"
        if failing:
            text += f", not at step {', '.join(map(str, failing))}"
        parts.append(text)
        passed += list(flags.values())
    if not passed:
        return None, "the selected mask keeps no weights and no checkpoint masks"
    return all(passed), "; ".join(parts)


# ------------------------------------------------------- necessity: overlap, ablations


@claim(
    "overlap",
    "Bigram and optimal subnetworks overlap far more than chance",
    "§6.2, Table 3",
    f"under the row-shuffle null (the paper's): ratio ≥ {OVERLAP_RATIO.value:g}× and p < "
    f"{OVERLAP_P.value:g}, which needs 1/(draws + 1) < {OVERLAP_P.value:g}",
    thresholds=(OVERLAP_RATIO, OVERLAP_P),
)
def _overlap(s: ModelSummary, evidence: Evidence) -> Outcome:
    ratio, p = s.overlap_row_ratio, s.overlap_row_p
    if not _finite(ratio, p):
        return None, "no selected bigram/optimal pair with a row-shuffle null"
    resolution = s.p_resolution
    text = f"{ratio:.2f}× chance (row-shuffle null"
    if _finite(s.overlap_ratio):
        text += f"; uniform null {s.overlap_ratio:.2f}×"
    if p <= resolution * (1 + 1e-9):
        text += f"), p = 1/{s.overlap_draws + 1:,}: no null draw reached it"
    else:
        text += f"), p = {p:.2g} (resolution 1/{s.overlap_draws + 1:,})"
    if _finite(s.overlap_share):
        text += f", {s.overlap_share:.1%} of the bigram mask inside the optimal one"
    if resolution >= OVERLAP_P.value:
        text += f"; too few draws to reach p < {OVERLAP_P.value:g}"
    return ratio >= OVERLAP_RATIO.value and p < OVERLAP_P.value, text


def _increase(s: ModelSummary, condition: str) -> float:
    full = s.ablation_mean.get("full model", math.nan)
    return s.ablation_mean.get(condition, math.nan) - full


@claim(
    "random_removal",
    "Removing a random same-structure mask barely matters; removing the bigram mask hurts",
    "§6.3, Figure 5",
    f"bigram removal raises mean surprisal and random removal raises it by less than "
    f"{RANDOM_REMOVAL.value:.0%} of that",
    thresholds=(RANDOM_REMOVAL,),
    paper_note="random removal ≈ full model; bigram removal hurts (no loss values given)",
)
def _random_removal(s: ModelSummary, evidence: Evidence) -> Outcome:
    bigram, random = _increase(s, "bigram removed"), _increase(s, "random removed")
    if not _finite(bigram, random):
        return None, "ablation conditions missing"
    text = (
        f"full model {s.ablation_mean['full model']:.2f} bits; random removed {random:+.2f}, "
        f"bigram removed {bigram:+.2f}"
    )
    return bigram > 0 and random < RANDOM_REMOVAL.value * bigram, text


@claim(
    "bigram_vs_optimal",
    "Removing the bigram subnetwork hurts about as much as (or more than) removing the optimal",
    "§6.3, Figure 5",
    "both removals raise mean surprisal and the bigram removal's increase is ≥ "
    f"{ABOUT_AS_MUCH.value:g}× the optimal removal's",
    thresholds=(ABOUT_AS_MUCH,),
    paper_note="about as much as, sometimes more than, optimal removal (no loss values given)",
)
def _bigram_vs_optimal(s: ModelSummary, evidence: Evidence) -> Outcome:
    bigram, optimal = _increase(s, "bigram removed"), _increase(s, "optimal removed")
    if not _finite(bigram, optimal):
        return None, "no optimal mask removed (no selected pair)"
    text = f"bigram removed {bigram:+.2f} bits vs optimal removed {optimal:+.2f} bits"
    if optimal <= 0 or bigram <= 0:
        return False, text + " (a removal that does not raise surprisal)"
    return bigram >= ABOUT_AS_MUCH.value * optimal, text + f" ({bigram / optimal:.2f}×)"


# ------------------------------------------------------------------ residual stream


@claim(
    "rotation",
    "The first layer rotates activations away from the input; the full model and the bigram "
    "mask much more than a random mask",
    "§5.1, Figure 3",
    f"layer-1 median rotation to input of the full model and of the bigram mask ≥ "
    f"{ROTATION_FACTOR.value:g}× the random mask's and ≥ {ROTATION_MARGIN.value:g}° more",
    thresholds=(ROTATION_FACTOR, ROTATION_MARGIN),
    paper_note="GPT-2 large full model 0.0° → 56.2°, Pythia 160M bigram 0.0° → 47.0° to input; "
    "random subnetworks much less (only plotted)",
)
def _rotation(s: ModelSummary, evidence: Evidence) -> Outcome:
    values = {c: s.rotation_to_input.get(c, {}).get(1) for c in ("full model", "bigram", "random")}
    if not _finite(*values.values()):
        return None, "no layer-1 rotations of all three conditions"
    full, bigram, random = (float(v) for v in values.values())  # type: ignore[arg-type]
    floor = max(ROTATION_FACTOR.value * random, random + ROTATION_MARGIN.value)
    text = f"layer 1, to input: full {full:.1f}°, bigram {bigram:.1f}°, random {random:.1f}°"
    return full >= floor and bigram >= floor, text


@claim(
    "covariance",
    "The bigram mask reproduces the full model's layer 0/1 covariance break better than a "
    "random mask",
    "§5.2, Figure 4",
    "|bigram − full| < |random − full| for the layer 0/1 covariance similarity",
    paper_note="the bigram subnetwork keeps the layer 0/1 break; random ≈ 1.0 (no values given)",
)
def _covariance(s: ModelSummary, evidence: Evidence) -> Outcome:
    values = [s.covariance_01.get(c) for c in ("full model", "bigram", "random")]
    if not _finite(*values):
        return None, "no layer 0/1 covariance similarity"
    full, bigram, random = (float(v) for v in values)  # type: ignore[arg-type]
    text = (
        f"similarity of layers 0 and 1: full {full:.2f}, bigram {bigram:.2f}, random {random:.2f}"
    )
    return abs(bigram - full) < abs(random - full), text


# ------------------------------------------------------------------ Table 2 controls


def _controls(values: dict[str, Estimate], *names: str) -> list[Estimate] | None:
    found = [values.get(name, Estimate()) for name in names]
    return found if all(e.measured for e in found) else None


def _unseen(*estimates: Estimate) -> str:
    unseen = [e.unseen for e in estimates if _finite(e.unseen)]
    return f" (unseen {min(unseen):.1%}–{max(unseen):.1%})" if unseen else ""


@claim(
    "random_init",
    "Bigram r at random initialisation is lower than after training",
    "§A.4, Table 2",
    "the trained λ = 0 subnetwork's r interval lies above the random initialisation's",
    scope="controls",
    thresholds=(INTERVALS,),
)
def _random_init(values: dict[str, Estimate], evidence: Evidence) -> Outcome:
    found = _controls(values, "random init", "bigram subnetwork")
    if found is None:
        return None, "controls missing"
    init, trained = found
    passed, margin = above(trained, init)
    return passed, f"random init {init.text()} vs trained {trained.text()}, {_margin(margin)}"


@claim(
    "trained_embeddings",
    "Trained embeddings with a random body restore most of the trained r",
    "§A.4, Table 2",
    f"the trained embeddings raise r above random initialisation (intervals) and restore ≥ "
    f"{RESTORED.value:.0%} of the gap between random initialisation and the trained subnetwork",
    scope="controls",
    thresholds=(RESTORED, INTERVALS),
)
def _trained_embeddings(values: dict[str, Estimate], evidence: Evidence) -> Outcome:
    names = ("random init", "random body, trained embeddings", "bigram subnetwork")
    found = _controls(values, *names)
    if found is None:
        return None, "controls missing"
    init, hybrid, trained = found
    text = (
        f"random init {init.text()}, random body + trained embeddings {hybrid.text()}, "
        f"trained {trained.text()}"
    )
    raised, margin = above(hybrid, init)
    if not raised:
        return False, text + f" (the trained embeddings do not raise r: {_margin(margin)})"
    if trained.value <= init.value:
        return False, text + " (training does not raise r: no gap to restore)"
    restored = (hybrid.value - init.value) / (trained.value - init.value)
    return restored >= RESTORED.value, text + f" ({restored:.0%} of the gap restored)"


@claim(
    "embeddings_only",
    "Embeddings alone (empty mask) fall well short of the subnetwork",
    "§A.4, Table 2",
    f"the empty mask's r interval lies more than {EMBEDDINGS_GAP.value:g} below the λ = 0 "
    "subnetwork's",
    scope="controls",
    thresholds=(EMBEDDINGS_GAP, INTERVALS),
)
def _embeddings_only(values: dict[str, Estimate], evidence: Evidence) -> Outcome:
    found = _controls(values, "embeddings only", "bigram subnetwork")
    if found is None:
        return None, "controls missing"
    alone, trained = found
    passed, margin = above(trained, alone, EMBEDDINGS_GAP.value)
    text = f"embeddings only {alone.text()} vs {trained.text()}, {_margin(margin)}"
    return passed, text + _unseen(alone, trained)


@claim(
    "linear_map",
    "A linear map on the input embeddings raises r above the embeddings alone",
    "§A.4, Table 2",
    "the layer-0 linear map's r (fitted on the bigram subnetwork, scored on held-out sequences) "
    "lies above the embeddings-only r (intervals)",
    scope="controls",
    thresholds=(INTERVALS,),
)
def _linear_map(values: dict[str, Estimate], evidence: Evidence) -> Outcome:
    found = _controls(values, "embeddings + layer-0 linear map", "embeddings only")
    if found is None:
        return None, "controls missing"
    mapped, alone = found
    passed, margin = above(mapped, alone)
    text = f"with the linear map {mapped.text()} vs embeddings only {alone.text()}"
    return passed, text + f", {_margin(margin)}" + _unseen(mapped, alone)


# ------------------------------------------------------------------------ checkpoints


def _usable(c: CheckpointSummary, budget: int) -> dict[int, Estimate]:
    """The measured, not extrapolated fitted r at one budget, by step."""
    flags = c.extrapolated.get(budget, {})
    return {
        step: r
        for step, r in c.r_at_budget.get(budget, {}).items()
        if r.measured and not flags.get(step, False)
    }


def _budget(c: CheckpointSummary) -> int | None:
    """The budget with the most non-extrapolated estimates (the smallest on ties)."""
    counts = {budget: len(_usable(c, budget)) for budget in c.r_at_budget}
    usable = [b for b, n in counts.items() if n >= 2]
    return min(usable, key=lambda b: (-counts[b], b)) if usable else None


def _extrapolated(c: CheckpointSummary, budget: int) -> str:
    flags = c.extrapolated.get(budget, {})
    steps = [step for step, flag in flags.items() if flag]
    return f"; extrapolated, not deciding: step {', '.join(map(str, steps))}" if steps else ""


def _peak(series: dict[int, Estimate]) -> tuple[int, Estimate] | None:
    measured = {step: r for step, r in series.items() if r.measured}
    if not measured:
        return None
    step = max(measured, key=lambda s: (measured[s].value, -s))  # earliest at the maximum
    return step, measured[step]


@claim(
    "full_r_falls",
    "The full model's bigram r peaks early in training, then falls",
    "§4.1, Figure 2",
    "the highest full-model r before the last checkpoint lies above the last one's (intervals)",
    scope="checkpoints",
    thresholds=(INTERVALS,),
    paper_note="the full model moves away from bigram predictions after an early peak (the text "
    "gives its step, not its r)",
)
def _full_r_falls(c: CheckpointSummary, evidence: Evidence) -> Outcome:
    measured = {step: r for step, r in c.full_model_r.items() if r.measured}
    if len(measured) < 2:
        return None, "fewer than two checkpoints with a full-model r"
    last = max(measured)
    peak = _peak({step: r for step, r in measured.items() if step < last})
    assert peak is not None
    passed, margin = above(peak[1], measured[last])
    text = (
        f"full-model r peaks at step {peak[0]} ({peak[1].text()}), {measured[last].text()} at "
        f"step {last}, {_margin(margin)} ({c.r_variant})"
    )
    return passed, text


@claim(
    "peaks_later",
    "Subnetwork r (at a fixed budget) peaks later than the full model's r",
    "§4.1, Figure 2",
    "at the budget with the most non-extrapolated estimates, the subnetwork's peak comes after "
    "the full model's peak step and its interval lies above every estimate up to that step",
    scope="checkpoints",
    thresholds=(INTERVALS,),
    paper_note="subnetwork r peaks > 2K steps after the full model's (Pythia 1B, about step 4K) "
    "and > 1K steps after it in the other models (steps only, no r values)",
)
def _peaks_later(c: CheckpointSummary, evidence: Evidence) -> Outcome:
    full = _peak(c.full_model_r)
    budget = _budget(c)
    if full is None or budget is None:
        return None, "no full-model r or fewer than two non-extrapolated fitted r"
    series = _usable(c, budget)
    before = {step: r for step, r in series.items() if step <= full[0]}
    peak = _peak(series)
    assert peak is not None
    if not before:
        return None, f"no non-extrapolated r at {budget:,} active up to step {full[0]}"
    ceiling = max(before.values(), key=lambda r: r.bounds()[1])
    passed, margin = above(peak[1], ceiling)
    text = (
        f"r at {budget:,} active peaks at step {peak[0]} ({peak[1].text()}); the full model "
        f"peaks at step {full[0]}; highest up to then {ceiling.text()}, {_margin(margin)} "
        f"({c.r_variant})" + _extrapolated(c, budget)
    )
    return peak[0] > full[0] and passed, text


@claim(
    "decompression",
    "Later in training the subnetwork decompresses: r at a fixed budget falls after its peak",
    "§4.1, Figure 2",
    "at the budget with the most non-extrapolated estimates, the highest r before the last "
    "checkpoint lies above the last one's (intervals; extrapolated estimates never decide)",
    scope="checkpoints",
    thresholds=(INTERVALS,),
)
def _decompression(c: CheckpointSummary, evidence: Evidence) -> Outcome:
    budget = _budget(c)
    if budget is None:
        return None, "fewer than two non-extrapolated fitted r at any budget"
    series = _usable(c, budget)
    last = max(series)
    earlier = _peak({step: r for step, r in series.items() if step < last})
    if last != max(c.r_at_budget[budget]) or earlier is None:
        return None, f"the last checkpoint's r at {budget:,} active is extrapolated"
    passed, margin = above(earlier[1], series[last])
    text = (
        f"r at {budget:,} active: {earlier[1].text()} at step {earlier[0]} vs "
        f"{series[last].text()} at step {last}, {_margin(margin)} ({c.r_variant})"
        + _extrapolated(c, budget)
    )
    return passed, text
