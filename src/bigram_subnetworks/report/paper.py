"""The paper's reported numbers as data, and a verdict on each of its claims computed from a run.

Every number below is copied from Chang & Bergen 2025 (NeurIPS camera-ready; see
/work/shared/paper.md, "Numbers a reproduction should be checked against"), with the section,
table or figure it comes from. Verdicts are computed from the run's tables only: "holds" when the
claim's test passes for every model where it could be measured, "does not hold" when it fails for
one or more of them, "not measured" when the run has no data for it. Each verdict carries the
numbers that decided it. The tests' thresholds are named constants here, stated in the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from bigram_subnetworks.report.summary import CheckpointSummary, ModelSummary
from bigram_subnetworks.report.tables import RunTables

HOLDS = "holds"
FAILS = "does not hold"
NOT_MEASURED = "not measured"

# ------------------------------------------------------------------ the paper's numbers

# Figure 1, right panel (§3.2): best bigram-subnetwork r over λ, and the full model's own r.
BEST_R: dict[str, tuple[float, float]] = {
    "Pythia 70M": (0.961, 0.737),
    "Pythia 160M": (0.964, 0.690),
    "Pythia 410M": (0.983, 0.650),
    "Pythia 1B": (0.987, 0.632),
    "GPT-2 small*": (0.987, 0.680),
    "GPT-2 small": (0.979, 0.624),
    "GPT-2 medium": (0.985, 0.582),
    "GPT-2 large": (0.986, 0.583),
}

# Masked (block weight-matrix) parameters, 12·L·d²: Table 1's "Total mask parameters" for
# Pythia 160M / 1B, GPT-2 small / large; computed from the standard configs for the others.
MASKED_WEIGHTS: dict[str, int] = {
    "Pythia 70M": 18_874_368,
    "Pythia 160M": 84_934_656,
    "Pythia 410M": 301_989_888,
    "Pythia 1B": 805_306_368,
    "GPT-2 small": 84_934_656,
    "GPT-2 medium": 301_989_888,
    "GPT-2 large": 707_788_800,
}


@dataclass(frozen=True)
class SelectedMask:
    """A row of Table 1: the subnetwork chosen for the detailed analyses."""

    lam: float
    active: int
    total: int
    r: float

    @property
    def fraction(self) -> float:
        return self.active / self.total


# Table 1 (§A.3): λ, active parameters, total mask parameters, bigram r.
SELECTED: dict[str, SelectedMask] = {
    "Pythia 160M": SelectedMask(10, 7_238_986, 84_934_656, 0.953),
    "Pythia 1B": SelectedMask(100, 1_378_087, 805_306_368, 0.959),
    "GPT-2 small*": SelectedMask(10, 924_639, 84_934_656, 0.962),
    "GPT-2 small": SelectedMask(10, 904_866, 84_934_656, 0.952),
    "GPT-2 large": SelectedMask(100, 727_556, 707_788_800, 0.946),
}

# Table 3 (§6.2, §A.9): actual/expected overlap of the bigram and optimal subnetworks, and the
# share of the bigram subnetwork inside the optimal one.
OVERLAP_RATIO: dict[str, tuple[float, float]] = {
    "Pythia 160M": (3.81, 0.614),
    "Pythia 1B": (15.27, 0.380),
    "GPT-2 small*": (7.03, 0.221),
    "GPT-2 small": (7.27, 0.143),
    "GPT-2 large": (12.70, 0.325),
}
# Table 3: none of the 10K null pairs reached the real overlap, so p < 0.0001 for every model.
OVERLAP_P_BOUND = 1e-4

# Table 2 (§A.4), all with λ = 0; keys are the controls stage's names.
CONTROLS: dict[str, dict[str, float]] = {
    "Pythia 160M": {
        "full model": 0.690,
        "bigram subnetwork": 0.964,
        "random init": 0.787,
        "random body, trained embeddings": 0.965,
        "embeddings only": 0.305,
        "embeddings + layer-0 linear map": 0.615,
    },
    "Pythia 1B": {
        "full model": 0.632,
        "bigram subnetwork": 0.987,
        "random init": 0.896,
        "random body, trained embeddings": 0.986,
        "embeddings only": 0.628,
        "embeddings + layer-0 linear map": 0.936,
    },
    "GPT-2 small*": {
        "full model": 0.680,
        "bigram subnetwork": 0.987,
        "random init": 0.759,
        "random body, trained embeddings": 0.974,
        "embeddings only": 0.680,
        "embeddings + layer-0 linear map": 0.921,
    },
}

# §5.1 and Figure 3: median rotation (degrees) at layer 0 and layer 1, to input and to output.
ROTATIONS: dict[str, dict[str, tuple[float, float]]] = {
    "GPT-2 large, full model": {"to input": (0.0, 56.2), "to output": (70.5, 46.3)},
    "Pythia 160M, bigram subnetwork": {"to input": (0.0, 47.0), "to output": (68.5, 34.5)},
}

# §4.2: where Pythia 1B's final-checkpoint subnetwork (λ = 100) sits.
PYTHIA_1B_LOCATION = {"MLP": 0.821, "attention": 0.179, "V+O": 0.116, "Q+K": 0.063}

# §4.1: Pythia 1B, estimated r with 500K active parameters at steps 4K and 143K (decompression).
PYTHIA_1B_BUDGET = 500_000
PYTHIA_1B_R_AT_BUDGET = {4_000: 0.949, 143_000: 0.919}

# §A.3: with λ = 0 most subnetworks keep about half of the masked parameters.
LAMBDA0_FRACTION = 0.5
# §3.2, Figure 1: the bigram r levels off at about 10M active non-embedding parameters.
PLATEAU_ACTIVE = 10_000_000
# §A.3: results stay similar for any reasonably sparse subnetwork (< 10% active).
SPARSE_FRACTION = 0.10
# §3.2 (claim 1): subnetworks with r > 0.95 exist in every model up to 1B parameters.
HIGH_R = 0.95

# ------------------------------------------------------------ thresholds of our tests

LAMBDA0_RANGE = (0.3, 0.7)  # "about half"
PLATEAU_GAIN = 0.01  # "levels off": masks above 10M active add less than this to the best r
RANDOM_REMOVAL_SHARE = 0.2  # "almost no effect": < this × the bigram removal's increase
ABOUT_AS_MUCH = 0.8  # "about as much as": ≥ this × the optimal removal's increase
ROTATION_FACTOR = 2.0  # "much more rotation": ≥ this × the random mask's, and
ROTATION_MARGIN = 10.0  # at least this many degrees more
RESTORED_SHARE = 0.8  # trained embeddings restore ≥ this share of the random-init gap
EMBEDDINGS_GAP = 0.1  # embeddings alone fall at least this far below the bigram subnetwork
ALPHA = 0.05  # significance level of the overlap test

# ------------------------------------------------------------------------ verdicts


@dataclass(frozen=True)
class Evidence:
    """What the checks read: the run's tables and the summaries made from them."""

    tables: RunTables
    models: list[ModelSummary]
    checkpoints: list[CheckpointSummary]
    controls: dict[str, dict[str, float]]  # model -> control -> bigram r


@dataclass(frozen=True)
class Verdict:
    """One claim of the paper, what the paper reports, what this run measured, and the verdict."""

    key: str
    claim: str
    where: str
    paper: str
    ours: str
    status: str


Outcome = tuple[bool | None, str]  # passed (None: not measured), and the numbers that decided


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _span(values: list[float], fmt: str = ".3f") -> str:
    low, high = min(values), max(values)
    return f"{low:{fmt}}" if low == high else f"{low:{fmt}}–{high:{fmt}}"


def combine(outcomes: list[tuple[str, bool | None, str]]) -> tuple[str, str]:
    """The verdict over models: holds if every measured model passes, does not hold if one
    fails, not measured if none was measured; with each model's numbers."""
    ours = "; ".join(f"{name}: {text}" for name, _, text in outcomes) or "no models"
    measured = [passed for _, passed, _ in outcomes if passed is not None]
    if not measured:
        return NOT_MEASURED, ours
    held = sum(measured)
    if 0 < held < len(measured):
        ours += f" (holds for {held} of {len(measured)})"
    return (HOLDS if held == len(measured) else FAILS), ours


def _per_model(check: Callable[[ModelSummary], Outcome]) -> Callable[[Evidence], tuple[str, str]]:
    return lambda evidence: combine([(s.model, *check(s)) for s in evidence.models])


def _per_control(
    check: Callable[[dict[str, float]], Outcome],
) -> Callable[[Evidence], tuple[str, str]]:
    def run(evidence: Evidence) -> tuple[str, str]:
        if not evidence.controls:
            return NOT_MEASURED, "no controls (the config has no checkpoints section)"
        return combine([(m, *check(values)) for m, values in evidence.controls.items()])

    return run


def _per_checkpoint_model(
    check: Callable[[CheckpointSummary], Outcome],
) -> Callable[[Evidence], tuple[str, str]]:
    def run(evidence: Evidence) -> tuple[str, str]:
        if not evidence.checkpoints:
            return NOT_MEASURED, "no checkpoint analysis (the config has no checkpoints section)"
        return combine([(c.model, *check(c)) for c in evidence.checkpoints])

    return run


# --- existence and size


def _best_above_full(s: ModelSummary) -> Outcome:
    if not _finite(s.best_r, s.full_model_r):
        return None, "no trained bigram mask or no full-model r"
    text = f"best r {s.best_r:.3f} (λ = {s.best_lambda}) vs full model {s.full_model_r:.3f}"
    return s.best_r > s.full_model_r, text


def _best_high(s: ModelSummary) -> Outcome:
    if not _finite(s.best_r):
        return None, "no trained bigram mask"
    return s.best_r > HIGH_R, f"best r {s.best_r:.3f} (λ = {s.best_lambda})"


def _lambda0_half(s: ModelSummary) -> Outcome:
    if not _finite(s.lambda0_kept_fraction):
        return None, "no λ = 0 mask"
    low, high = LAMBDA0_RANGE
    fraction = s.lambda0_kept_fraction
    return low <= fraction <= high, f"{fraction:.1%} kept"


def _selected_sparse(s: ModelSummary) -> Outcome:
    if not _finite(s.selected_kept_fraction):
        return None, "no selected mask"
    fraction = s.selected_kept_fraction
    text = f"λ = {s.selected_lambda}: {fraction:.2%} kept, r {s.selected_r:.3f}"
    if s.selected_kept == 0:
        return False, text + " (the selected mask is empty)"
    return fraction < SPARSE_FRACTION, text


def _plateau(evidence: Evidence) -> tuple[str, str]:
    metrics = evidence.tables.metric_table()
    outcomes: list[tuple[str, bool | None, str]] = []
    for s in evidence.models:
        sweep = metrics[
            (metrics["model"] == s.model)
            & (metrics["target"] == "bigram")
            & metrics["lambda_value"].map(math.isfinite)
            & (metrics["kept"] > 0)
        ]
        small = sweep[sweep["kept"] <= PLATEAU_ACTIVE]["bigram_r"].dropna()
        large = sweep[sweep["kept"] > PLATEAU_ACTIVE]["bigram_r"].dropna()
        if small.empty or large.empty:
            text = f"every mask keeps {'≤' if large.empty else '>'} 10M weights"
            outcomes.append((s.model, None, text + f" ({s.masked_weights:,} masked in all)"))
            continue
        gain = float(large.max() - small.max())
        text = f"best r ≤ 10M active {small.max():.3f}, above 10M {large.max():.3f}"
        outcomes.append((s.model, gain < PLATEAU_GAIN, text))
    return combine(outcomes)


# --- location


def _first_mlp_plurality(s: ModelSummary) -> Outcome:
    if s.first_mlp_is_plurality is None:
        return None, "the selected mask keeps no weights"
    text = (
        f"layer-0 MLP holds {s.first_mlp_share:.1%} (all MLPs {s.mlp_share:.1%}, attention "
        f"{s.attention_share:.1%}); largest group: {s.largest_group}"
    )
    return s.first_mlp_is_plurality, text


# --- necessity: overlap and ablations


def _overlap(s: ModelSummary) -> Outcome:
    if not _finite(s.overlap_ratio, s.overlap_p):
        return None, "no selected bigram/optimal pair with a defined overlap ratio"
    text = (
        f"{s.overlap_ratio:.2f}× chance, p = {s.overlap_p:.2g}, {s.overlap_share:.1%} of the "
        "bigram mask inside the optimal one"
    )
    return s.overlap_ratio > 1 and s.overlap_p < ALPHA, text


def _increase(s: ModelSummary, condition: str) -> float:
    full = s.ablation_mean.get("full model", math.nan)
    return s.ablation_mean.get(condition, math.nan) - full


def _random_removal_harmless(s: ModelSummary) -> Outcome:
    bigram, random = _increase(s, "bigram removed"), _increase(s, "random removed")
    if not _finite(bigram, random):
        return None, "ablation conditions missing"
    text = (
        f"full model {s.ablation_mean['full model']:.2f} bits; random removed {random:+.2f}, "
        f"bigram removed {bigram:+.2f}"
    )
    return bigram > 0 and random < RANDOM_REMOVAL_SHARE * bigram, text


def _bigram_vs_optimal(s: ModelSummary) -> Outcome:
    bigram, optimal = _increase(s, "bigram removed"), _increase(s, "optimal removed")
    if not _finite(bigram, optimal):
        return None, "no optimal mask removed (no selected pair)"
    text = f"bigram removed {bigram:+.2f} bits vs optimal removed {optimal:+.2f} bits"
    return bigram >= ABOUT_AS_MUCH * optimal, text


# --- residual stream


def _rotation(s: ModelSummary) -> Outcome:
    values = {c: s.rotation_to_input.get(c, {}).get(1) for c in ("full model", "bigram", "random")}
    if not _finite(*values.values()):
        return None, "no layer-1 rotations"
    full, bigram, random = (float(v) for v in values.values())  # type: ignore[arg-type]
    floor = max(ROTATION_FACTOR * random, random + ROTATION_MARGIN)
    text = f"layer 1, to input: full {full:.1f}°, bigram {bigram:.1f}°, random {random:.1f}°"
    return full >= floor and bigram >= floor, text


def _covariance_break(s: ModelSummary) -> Outcome:
    values = [s.covariance_01.get(c) for c in ("full model", "bigram", "random")]
    if not _finite(*values):
        return None, "no layer 0/1 covariance similarity"
    full, bigram, random = (float(v) for v in values)  # type: ignore[arg-type]
    text = (
        f"similarity of layers 0 and 1: full {full:.2f}, bigram {bigram:.2f}, random {random:.2f}"
    )
    return abs(bigram - full) < abs(random - full), text


# --- Table 2 controls


def _control(values: dict[str, float], *names: str) -> list[float] | None:
    found = [values.get(name) for name in names]
    return [float(v) for v in found] if _finite(*found) else None  # type: ignore[arg-type]


def _random_init_lower(values: dict[str, float]) -> Outcome:
    found = _control(values, "random init", "bigram subnetwork")
    if found is None:
        return None, "controls missing"
    init, trained = found
    return init < trained, f"random init {init:.3f} vs trained {trained:.3f}"


def _trained_embeddings(values: dict[str, float]) -> Outcome:
    found = _control(values, "random init", "random body, trained embeddings", "bigram subnetwork")
    if found is None:
        return None, "controls missing"
    init, hybrid, trained = found
    text = (
        f"random init {init:.3f}, random body + trained embeddings {hybrid:.3f}, "
        f"trained {trained:.3f}"
    )
    if trained <= init:
        return None, text + " (no gap to restore)"
    restored = (hybrid - init) / (trained - init)
    return restored >= RESTORED_SHARE, text + f" ({restored:.0%} of the gap restored)"


def _embeddings_only_low(values: dict[str, float]) -> Outcome:
    found = _control(values, "embeddings only", "bigram subnetwork")
    if found is None:
        return None, "controls missing"
    alone, trained = found
    return alone <= trained - EMBEDDINGS_GAP, f"embeddings only {alone:.3f} vs {trained:.3f}"


def _linear_map(values: dict[str, float]) -> Outcome:
    found = _control(values, "embeddings + layer-0 linear map", "embeddings only")
    if found is None:
        return None, "controls missing"
    mapped, alone = found
    return mapped > alone, f"with the linear map {mapped:.3f} vs embeddings only {alone:.3f}"


# --- checkpoints


def _peak(series: dict[int, float]) -> tuple[int, float] | None:
    finite = {step: r for step, r in series.items() if math.isfinite(r)}
    if not finite:
        return None
    step = max(finite, key=lambda s: (finite[s], -s))  # the earliest step at the maximum
    return step, finite[step]


def _full_r_falls(c: CheckpointSummary) -> Outcome:
    peak = _peak(c.full_model_r)
    if peak is None or len(c.full_model_r) < 3:
        return None, "fewer than three checkpoints with a full-model r"
    last = max(c.full_model_r)
    step, value = peak
    text = f"full-model r peaks at step {step} ({value:.3f}), {c.full_model_r[last]:.3f} at {last}"
    return step < last and c.full_model_r[last] < value, text


def _smallest_budget(c: CheckpointSummary) -> tuple[int, dict[int, float]] | None:
    if not c.r_at_budget:
        return None
    budget = min(c.r_at_budget)
    return budget, c.r_at_budget[budget]


def _subnetwork_peaks_later(c: CheckpointSummary) -> Outcome:
    found, full = _smallest_budget(c), _peak(c.full_model_r)
    if found is None or full is None:
        return None, "no power-law fits across checkpoints"
    budget, series = found
    peak = _peak(series)
    if peak is None:
        return None, "no finite fitted r"
    text = f"r at {budget:,} active peaks at step {peak[0]}; the full model's r at step {full[0]}"
    return peak[0] > full[0], text


def _decompression(c: CheckpointSummary) -> Outcome:
    found = _smallest_budget(c)
    if found is None:
        return None, "no power-law fits across checkpoints"
    budget, series = found
    last = max(series)
    earlier = _peak({step: r for step, r in series.items() if step < last})
    if earlier is None or not math.isfinite(series[last]):
        return None, "fewer than two checkpoints with a fitted r"
    flags = c.extrapolated.get(budget, {})
    marks = {s: " (extrapolated)" if flags.get(s) else "" for s in (earlier[0], last)}
    text = (
        f"r at {budget:,} active: {earlier[1]:.3f} at step {earlier[0]}{marks[earlier[0]]} vs "
        f"{series[last]:.3f} at step {last}{marks[last]}"
    )
    return earlier[1] > series[last], text


# ------------------------------------------------------------------- the claims


@dataclass(frozen=True)
class Claim:
    """A claim of the paper: where it is made, what the paper reports, and its check."""

    key: str
    claim: str
    where: str
    paper: str
    check: Callable[[Evidence], tuple[str, str]]


def _paper_texts() -> dict[str, str]:
    """What the paper reports for each claim, written from the numbers above."""
    best = [b for b, _ in BEST_R.values()]
    full = [f for _, f in BEST_R.values()]
    fractions = [m.fraction for m in SELECTED.values()]
    selected_r = [m.r for m in SELECTED.values()]
    ratios = [r for r, _ in OVERLAP_RATIO.values()]
    table2 = {name: [c[name] for c in CONTROLS.values()] for name in next(iter(CONTROLS.values()))}
    restored = [
        (c["random body, trained embeddings"] - c["random init"])
        / (c["bigram subnetwork"] - c["random init"])
        for c in CONTROLS.values()
    ]
    rotations = "; ".join(
        f"{name}: {v['to input'][0]:.1f}° → {v['to input'][1]:.1f}° to input"
        for name, v in ROTATIONS.items()
    )
    early, late = sorted(PYTHIA_1B_R_AT_BUDGET)
    return {
        "best_above_full": f"best r {_span(best)} vs full model {_span(full)} (8 models)",
        "best_high": f"best r {_span(best)} in all 8 models",
        "lambda0_half": f"about {LAMBDA0_FRACTION:.0%} of the masked weights",
        "selected_sparse": (
            f"{_span(fractions, '.2%')} of the masked weights at r {_span(selected_r)} "
            f"(5 models, λ = 10 or 100)"
        ),
        "plateau": f"r levels off at about {PLATEAU_ACTIVE / 1e6:.0f}M active parameters",
        "first_mlp": (
            "plurality in the layer-0 MLP at every checkpoint; Pythia 1B final: MLP "
            f"{PYTHIA_1B_LOCATION['MLP']:.1%}, attention {PYTHIA_1B_LOCATION['attention']:.1%}"
        ),
        "overlap": f"{_span(ratios, '.2f')}× chance, p < {OVERLAP_P_BOUND:g} (5 models)",
        "random_removal": "random removal ≈ full model; bigram removal hurts (values not given)",
        "bigram_vs_optimal": "about as much as, sometimes more than, optimal removal (no values)",
        "rotation": rotations + "; random masks much less",
        "covariance": "bigram mask keeps the layer 0/1 break; random ≈ 1.0 everywhere (no values)",
        "random_init": (
            f"random init {_span(table2['random init'])} vs trained "
            f"{_span(table2['bigram subnetwork'])} (3 models)"
        ),
        "trained_embeddings": (
            f"{_span(table2['random body, trained embeddings'])} vs trained "
            f"{_span(table2['bigram subnetwork'])} ({_span(restored, '.0%')} of the gap restored)"
        ),
        "embeddings_only": (
            f"embeddings only {_span(table2['embeddings only'])} vs "
            f"{_span(table2['bigram subnetwork'])}"
        ),
        "linear_map": (
            f"{_span(table2['embeddings + layer-0 linear map'])} vs embeddings only "
            f"{_span(table2['embeddings only'])}"
        ),
        "full_r_falls": "the full model moves away from bigram predictions early in training",
        "peaks_later": "subnetwork r peaks > 1K–2K steps after the full model's (Pythia 1B: ~4K)",
        "decompression": (
            f"Pythia 1B at {PYTHIA_1B_BUDGET:,} active: {PYTHIA_1B_R_AT_BUDGET[early]:.3f} at "
            f"step {early:,} vs {PYTHIA_1B_R_AT_BUDGET[late]:.3f} at step {late:,}"
        ),
    }


_PAPER = _paper_texts()
CLAIMS: list[Claim] = [
    Claim(
        "best_above_full",
        "Bigram subnetworks match bigram surprisal better than the full model does",
        "§3.2, Figure 1",
        _PAPER["best_above_full"],
        _per_model(_best_above_full),
    ),
    Claim(
        "best_high",
        f"Bigram subnetworks reach r > {HIGH_R}",
        "§3.2, claim 1",
        _PAPER["best_high"],
        _per_model(_best_high),
    ),
    Claim(
        "lambda0_half",
        "λ = 0 keeps about half of the masked weights "
        f"({LAMBDA0_RANGE[0]:.0%}–{LAMBDA0_RANGE[1]:.0%})",
        "§A.3",
        _PAPER["lambda0_half"],
        _per_model(_lambda0_half),
    ),
    Claim(
        "selected_sparse",
        f"The selected subnetwork is sparse (non-empty, < {SPARSE_FRACTION:.0%} kept)",
        "Table 1, §A.3",
        _PAPER["selected_sparse"],
        _per_model(_selected_sparse),
    ),
    Claim(
        "plateau",
        f"r levels off at ~10M active parameters (masks above gain < {PLATEAU_GAIN})",
        "§3.2, Figure 1",
        _PAPER["plateau"],
        _plateau,
    ),
    Claim(
        "first_mlp",
        "The plurality of the selected mask's weights sits in the first MLP layer",
        "§4.2, Figure 2",
        _PAPER["first_mlp"],
        _per_model(_first_mlp_plurality),
    ),
    Claim(
        "overlap",
        f"Bigram and optimal masks overlap far above chance (ratio > 1, p < {ALPHA})",
        "§6.2, Table 3",
        _PAPER["overlap"],
        _per_model(_overlap),
    ),
    Claim(
        "random_removal",
        "Removing a random same-structure mask barely matters; removing the bigram mask hurts "
        f"(random's surprisal increase < {RANDOM_REMOVAL_SHARE:.0%} of the bigram's)",
        "§6.3, Figure 5",
        _PAPER["random_removal"],
        _per_model(_random_removal_harmless),
    ),
    Claim(
        "bigram_vs_optimal",
        "Removing the bigram mask hurts about as much as or more than removing the optimal "
        f"mask (≥ {ABOUT_AS_MUCH:.0%} of its surprisal increase)",
        "§6.3, Figure 5",
        _PAPER["bigram_vs_optimal"],
        _per_model(_bigram_vs_optimal),
    ),
    Claim(
        "rotation",
        "The first layer rotates activations away from the input; the full model and the bigram "
        f"mask much more than a random mask (≥ {ROTATION_FACTOR:g}× and "
        f"≥ {ROTATION_MARGIN:g}° more)",
        "§5.1, Figure 3",
        _PAPER["rotation"],
        _per_model(_rotation),
    ),
    Claim(
        "covariance",
        "The bigram mask reproduces the full model's layer 0/1 covariance break better than a "
        "random mask",
        "§5.2, Figure 4",
        _PAPER["covariance"],
        _per_model(_covariance_break),
    ),
    Claim(
        "random_init",
        "Bigram r at random initialisation is lower than after training",
        "§A.4, Table 2",
        _PAPER["random_init"],
        _per_control(_random_init_lower),
    ),
    Claim(
        "trained_embeddings",
        "Trained embeddings restore r with a random body "
        f"(≥ {RESTORED_SHARE:.0%} of the random-init gap)",
        "§A.4, Table 2",
        _PAPER["trained_embeddings"],
        _per_control(_trained_embeddings),
    ),
    Claim(
        "embeddings_only",
        f"Embeddings alone (empty mask) fall well short (≥ {EMBEDDINGS_GAP} below the subnetwork)",
        "§A.4, Table 2",
        _PAPER["embeddings_only"],
        _per_control(_embeddings_only_low),
    ),
    Claim(
        "linear_map",
        "A linear map on the input embeddings raises r above the embeddings alone",
        "§A.4, Table 2",
        _PAPER["linear_map"],
        _per_control(_linear_map),
    ),
    Claim(
        "full_r_falls",
        "The full model's bigram r peaks before the end of training, then falls",
        "§4.1, Figure 2",
        _PAPER["full_r_falls"],
        _per_checkpoint_model(_full_r_falls),
    ),
    Claim(
        "peaks_later",
        "Subnetwork r (at a fixed budget) peaks later than the full model's r",
        "§4.1, Figure 2",
        _PAPER["peaks_later"],
        _per_checkpoint_model(_subnetwork_peaks_later),
    ),
    Claim(
        "decompression",
        "r at a fixed budget is higher at an earlier checkpoint than at the last (decompression)",
        "§4.1, Figure 2",
        _PAPER["decompression"],
        _per_checkpoint_model(_decompression),
    ),
]


def verdicts(evidence: Evidence) -> list[Verdict]:
    """Every claim's verdict, computed from the run."""
    out = []
    for claim in CLAIMS:
        status, ours = claim.check(evidence)
        out.append(Verdict(claim.key, claim.claim, claim.where, claim.paper, ours, status))
    return out


def scale_note(models: list[ModelSummary]) -> str:
    """How the run's models compare in size with the paper's (masked weights)."""
    ours = [s.masked_weights for s in models if s.masked_weights > 0]
    if not ours:
        return "The run has no masked weights to compare with the paper's models."
    smallest = min(MASKED_WEIGHTS.values())
    largest = max(MASKED_WEIGHTS.values())
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


def side_by_side(models: list[ModelSummary]) -> pd.DataFrame:
    """Key quantities: the paper's range next to this run's range."""

    def ours(values: list[float], fmt: str) -> str:
        finite = [v for v in values if math.isfinite(v)]
        return _span(finite, fmt) if finite else NOT_MEASURED

    rows = [
        ("full-model bigram r", _span([f for _, f in BEST_R.values()]), ".3f", "full_model_r"),
        ("best bigram-mask r", _span([b for b, _ in BEST_R.values()]), ".3f", "best_r"),
        ("λ = 0 kept fraction", f"≈{LAMBDA0_FRACTION:.0%}", ".1%", "lambda0_kept_fraction"),
        (
            "selected kept fraction",
            _span([m.fraction for m in SELECTED.values()], ".2%"),
            ".2%",
            "selected_kept_fraction",
        ),
        ("selected r", _span([m.r for m in SELECTED.values()]), ".3f", "selected_r"),
        (
            "overlap ratio (× chance)",
            _span([r for r, _ in OVERLAP_RATIO.values()], ".2f"),
            ".2f",
            "overlap_ratio",
        ),
        (
            "share of the bigram mask inside the optimal",
            _span([s for _, s in OVERLAP_RATIO.values()], ".1%"),
            ".1%",
            "overlap_share",
        ),
    ]
    table = [
        {
            "quantity": name,
            "paper": paper,
            "this run": ours([float(getattr(s, attribute)) for s in models], fmt),
        }
        for name, paper, fmt, attribute in rows
    ]
    return pd.DataFrame(table, columns=["quantity", "paper", "this run"])
