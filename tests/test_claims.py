"""The verdicts calibrated on the paper itself (issue 12 item 3, issue 13 item 9), and decided by
rules fixed in advance with five verdicts and paired intervals (issue 20).

The paper's own numbers (`report/paper_numbers.yaml`, read into the same evidence form as a run's)
must pass every claim's rule wherever the paper reports numbers for it; counter-evidence made
from the paper's numbers by changing what the claim is about must fail it. Claims are declared
once (`report.claims.CLAIMS`) and their numbers live in one data file.
"""

from __future__ import annotations

import re
from dataclasses import replace
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import yaml

from bigram_subnetworks.report.claims import (
    CLAIMS,
    DESCRIPTIVE,
    FAILS,
    HOLDS,
    NOT_MEASURED,
    NOT_RESOLVED,
    STATUSES,
    Evidence,
    evaluate_claim,
)
from bigram_subnetworks.report.paper import paper_evidence, paper_numbers
from bigram_subnetworks.report.summary import CheckpointSummary, Estimate, ModelSummary

REPO = Path(__file__).resolve().parents[1]
# Claims the paper states without numbers its text gives (figure curves only, or no values):
# on the paper's evidence their rules cannot be measured.
PAPER_WITHOUT_NUMBERS = {
    "random_removal",  # Figure 5 right: no loss values in the text
    "bigram_vs_optimal",  # idem
    "rotation",  # the random subnetworks' rotations are only plotted
    "covariance",  # Figure 4: no values
    "full_r_falls",  # the full model's r across checkpoints is only plotted
    "peaks_later",  # the text gives the peaks' steps, not their r
}


def paper() -> Evidence:
    found = paper_evidence()
    return Evidence(found.models, found.checkpoints, found.controls)


def status(key: str, evidence: Evidence) -> tuple[str, str]:
    return evaluate_claim(CLAIMS[key], evidence)


def test_the_paper_numbers_are_packaged_data_with_a_source_per_section() -> None:
    text = resources.files("bigram_subnetworks.report").joinpath("paper_numbers.yaml")
    numbers = yaml.safe_load(text.read_text("utf-8"))
    assert numbers == paper_numbers()
    for name, section in numbers.items():
        if isinstance(section, dict):
            assert section.get("where"), f"section {name} has no source"
    pyproject = (REPO / "pyproject.toml").read_text("utf-8")
    assert "paper_numbers.yaml" in pyproject  # shipped with the package


def test_every_claim_holds_on_the_paper_wherever_the_paper_gives_numbers() -> None:
    found = {key: status(key, paper()) for key in CLAIMS}
    assert found["lambda0_half"][0] == DESCRIPTIVE
    measured = {key for key, (s, _) in found.items() if s != NOT_MEASURED} - {"lambda0_half"}
    assert measured == set(CLAIMS) - PAPER_WITHOUT_NUMBERS - {"lambda0_half"}
    for key in measured:
        assert found[key][0] == HOLDS, (key, found[key][1])
    for key in PAPER_WITHOUT_NUMBERS:
        assert found[key][0] == NOT_MEASURED, (key, found[key][1])
    # the numbers that decide are the paper's own
    assert "Pythia 1B: 15.27× chance (row-shuffle null), p = 1/10,001" in found["overlap"][1]
    assert "0.949 at step 4000 vs 0.919 at step 143000" in found["decompression"][1]
    assert "1.7% of the range" in found["plateau"][1]  # Pythia 160M, the example


def test_the_old_plateau_threshold_failed_the_paper_own_pythia_160m() -> None:
    """Pythia 160M: 7.24M active at r 0.953 (Table 1) and the λ = 0 mask (about 42M) at 0.964
    (Table 2): 0.011 gained above 10M, more than the old absolute threshold of 0.01."""
    pythia = next(s for s in paper().models if s.model == "Pythia 160M")
    small = [r.value for kept, r in pythia.sweep if kept <= 10_000_000]
    large = [r.value for kept, r in pythia.sweep if kept > 10_000_000]
    assert max(large) - max(small) == pytest.approx(0.011)
    assert max(large) - max(small) > 0.01  # the old PLATEAU_GAIN
    only = Evidence([pythia], [], {})
    assert status("plateau", only)[0] == HOLDS


# --------------------------------------------------------------- counter-evidence


def _models(change) -> Evidence:
    """The paper's evidence with `change(summary) -> summary` applied to every model."""
    base = paper()
    return replace(base, models=[change(s) for s in base.models])


def _controls(values: dict[str, float]) -> Evidence:
    base = paper()
    controls = {
        model: {**found, **{k: Estimate(v) for k, v in values.items()}}
        for model, found in base.controls.items()
    }
    return replace(base, controls=controls)


def _ablations(**means: float) -> Evidence:
    table = {"full model": 5.0, "bigram removed": 7.0, "random removed": 5.05}
    table |= {k.replace("_", " "): v for k, v in means.items()}
    return _models(
        lambda s: replace(
            s,
            ablation_mean={
                **table,
                "optimal removed": 7.2,
                **{k.replace("_", " "): v for k, v in means.items()},
            },
            # the optimal sweep brackets the bigram mask's size: +1.67 bits interpolated there
            optimal_removal_sweep=[(s.selected_kept / 2, 1.2), (s.selected_kept * 2, 3.2)],
        )
    )


def _estimates(s: ModelSummary, **values: Estimate) -> ModelSummary:
    return replace(
        s,
        estimates={**s.estimates, **values},
        **{k: v.value for k, v in values.items() if k in ("best_r", "full_model_r")},
    )


def _trajectory(full: dict[int, float], budget: dict[int, float]) -> Evidence:
    base = paper()
    trajectory = CheckpointSummary(
        model="Pythia 1B",
        steps=sorted(full),
        full_model_r={step: Estimate(r, r - 0.005, r + 0.005) for step, r in full.items()},
        r_at_budget={500_000: {s: Estimate(r, r - 0.005, r + 0.005) for s, r in budget.items()}},
    )
    return replace(base, checkpoints=[trajectory])


def _no_plurality_at(step: int) -> Evidence:
    base = paper()
    checkpoints = []
    for c in base.checkpoints:
        plurality = {label: {**flags, step: False} for label, flags in c.plurality.items()}
        checkpoints.append(replace(c, plurality=plurality))
    return replace(base, checkpoints=checkpoints)


COUNTER = {
    "best_above_full": _models(
        lambda s: _estimates(s, full_model_r=Estimate(0.99))
    ),  # subnetwork r below the full model's
    "best_high": _models(lambda s: _estimates(s, best_r=Estimate(0.94))),
    "selected_sparse": _models(
        lambda s: replace(s, selected_kept_fraction=0.3) if s.selected_kept else s
    ),
    "plateau": _models(  # r still climbing steeply above 10M active
        lambda s: replace(s, sweep=[(5e6, Estimate(0.70)), (5e7, Estimate(0.95))])
    ),
    "first_mlp": _no_plurality_at(1000),
    "overlap": _models(  # no overlap beyond chance
        lambda s: replace(s, overlap_row_ratio=1.0, overlap_row_p=0.5) if s.overlap_draws else s
    ),
    "random_removal": _ablations(random_removed=6.8),  # as harmful as bigram removal
    "bigram_vs_optimal": _ablations(bigram_removed=5.5),  # far less harmful than optimal
    "rotation": _models(
        lambda s: replace(
            s, rotation_to_input={"full model": {1: 50.0}, "bigram": {1: 12.0}, "random": {1: 9.0}}
        )
    ),
    "covariance": _models(
        lambda s: replace(s, covariance_01={"full model": 0.3, "bigram": 0.95, "random": 0.9})
    ),
    "random_init": _controls({"random init": 0.99}),
    "trained_embeddings": _controls({"random body, trained embeddings": 0.80}),
    "embeddings_only": _controls({"embeddings only": 0.95}),
    "linear_map": _controls({"embeddings only": 0.95}),
    "full_r_falls": _trajectory({0: 0.3, 2000: 0.6, 143000: 0.65}, {4000: 0.949, 143000: 0.919}),
    "peaks_later": _trajectory(
        {0: 0.3, 4000: 0.7, 143000: 0.63}, {0: 0.5, 4000: 0.949, 143000: 0.919}
    ),
    # the last checkpoint clearly above the peak (0.951, within the intervals, is not resolved)
    "decompression": _trajectory({0: 0.3, 2000: 0.7, 143000: 0.63}, {4000: 0.949, 143000: 0.97}),
}


def test_every_tested_claim_has_counter_evidence() -> None:
    assert set(COUNTER) == set(CLAIMS) - {"lambda0_half"}


@pytest.mark.parametrize("key", sorted(COUNTER))
def test_counter_evidence_makes_each_claim_fail(key: str) -> None:
    found, text = status(key, COUNTER[key])
    assert found == FAILS, (key, text)


def test_paper_like_trajectories_hold() -> None:
    """The same trajectory forms, shaped as the paper describes them, pass."""
    shaped = _trajectory(
        {0: 0.3, 2000: 0.75, 4000: 0.7, 143000: 0.632},
        {0: 0.80, 2000: 0.93, 4000: 0.949, 143000: 0.919},
    )
    for key in ("full_r_falls", "peaks_later", "decompression"):
        assert status(key, shaped)[0] == HOLDS, status(key, shaped)


def test_claims_are_declared_once_and_state_their_thresholds_sources() -> None:
    source = (REPO / "src/bigram_subnetworks/report/claims.py").read_text("utf-8")
    for key, claim in CLAIMS.items():
        assert len(re.findall(rf'@claim\(\s*"{key}"', source)) == 1, key
        assert claim.rule and claim.where
        for threshold in claim.thresholds:
            assert threshold.source, (key, threshold.name)
    build = (REPO / "src/bigram_subnetworks/report/build.py").read_text("utf-8")
    assert not any(f'"{key}"' in build for key in CLAIMS if key != "overlap")


def test_every_rule_states_when_it_is_not_resolved() -> None:
    assert STATUSES == (HOLDS, FAILS, NOT_RESOLVED, NOT_MEASURED, DESCRIPTIVE)
    for key, claim in CLAIMS.items():
        assert claim.not_resolved, key


def test_a_last_checkpoint_within_the_intervals_is_not_resolved() -> None:
    """Counter-evidence of old: 0.951 at the last step against a 0.949 peak, intervals ±0.005."""
    close = _trajectory({0: 0.3, 2000: 0.7, 143000: 0.63}, {4000: 0.949, 143000: 0.951})
    assert status("decompression", close)[0] == NOT_RESOLVED


# ------------------------------------------------- issue 20: rules fixed in advance


def _budgets(
    full: dict[int, tuple[float, float, float]],
    budgets: dict[int, dict[int, float]],
    **fields: object,
) -> Evidence:
    """A checkpoint trajectory with the full model's (r, low, high) and r at several budgets
    (±0.002 intervals)."""
    trajectory = CheckpointSummary(
        model="m",
        steps=sorted(full),
        full_model_r={step: Estimate(*values) for step, values in full.items()},
        r_at_budget={
            budget: {step: Estimate(r, r - 0.002, r + 0.002) for step, r in series.items()}
            for budget, series in budgets.items()
        },
        **fields,  # type: ignore[arg-type]
    )
    return Evidence([], [trajectory], {})


FULL = {0: (0.3, 0.29, 0.31), 1408: (0.75, 0.74, 0.76), 6000: (0.6, 0.59, 0.61)}


def test_budgets_that_disagree_give_not_resolved() -> None:
    """Issue 20 item 1: at 2,000 active the subnetwork peaks at the full model's step and then
    decompresses, at 20,000 it peaks later, at the last step, so it does not decompress. The old
    rule decided on one budget (the smallest on ties); now no budget is picked: they must
    agree."""
    split = _budgets(
        FULL,
        {
            2_000: {0: 0.50, 1408: 0.95, 2906: 0.85, 6000: 0.90},
            20_000: {0: 0.60, 1408: 0.90, 2906: 0.95, 6000: 0.97},
        },
    )
    for key in ("peaks_later", "decompression"):
        found, text = status(key, split)
        assert found == NOT_RESOLVED, (key, text)
        assert "disagree" in text and "at 2,000 active" in text and "at 20,000 active" in text
    agreeing = _budgets(
        FULL,
        {
            2_000: {0: 0.50, 1408: 0.80, 2906: 0.88, 6000: 0.85},
            20_000: {0: 0.60, 1408: 0.90, 2906: 0.95, 6000: 0.92},
        },
    )
    assert status("peaks_later", agreeing)[0] == HOLDS
    assert status("decompression", agreeing)[0] == HOLDS


def test_an_unresolved_full_model_peak_leaves_peaks_later_not_resolved() -> None:
    """Issue 20 item 2, the default run's numbers: the full model's r at step 1408, 0.8785
    [0.8761, 0.8810], and at step 2906, 0.8741 [0.8717, 0.8764], overlap, so its peak may be at
    either; a subnetwork peaking at 2906 neither peaks later nor does not. The old rule said
    'holds' (peak at 2906 after 1408)."""
    full = {
        0: (0.60, 0.598, 0.602),
        1408: (0.8785, 0.8761, 0.8810),
        2906: (0.8741, 0.8717, 0.8764),
        6000: (0.85, 0.848, 0.852),
    }
    evidence = _budgets(full, {20_000: {0: 0.70, 1408: 0.93, 2906: 0.95, 6000: 0.92}})
    found, text = status("peaks_later", evidence)
    assert found == NOT_RESOLVED, text
    assert "the full model may peak at steps 1408, 2906" in text


def _paired(value: float, shared: np.ndarray, noise: np.ndarray) -> Estimate:
    draws = value + shared + noise
    low, high = np.quantile(draws, [0.025, 0.975])
    return Estimate(value, float(low), float(high), draws=draws)


def test_a_paired_interval_resolves_what_the_marginal_intervals_cannot() -> None:
    """Issue 20 item 3: two r that move together across resamples (shared eval sequences) and
    differ by 0.004: their marginal intervals (±0.01) overlap, the resampled difference's does
    not. The old rule (non-overlap of the marginal intervals) said 'does not hold'."""
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.005, 1000)
    best = _paired(0.704, shared, rng.normal(0, 0.0005, 1000))
    full = _paired(0.700, shared, rng.normal(0, 0.0005, 1000))
    assert best.low < full.high  # the marginal intervals overlap
    model = ModelSummary(
        "m", estimates={"best_r": best, "full_model_r": full}, best_r=0.704, full_model_r=0.7
    )
    found, text = status("best_above_full", Evidence([model], [], {}))
    assert found == HOLDS, text
    assert "(paired)" in text
    marginal = ModelSummary(
        "m",
        estimates={
            "best_r": Estimate(best.value, best.low, best.high),
            "full_model_r": Estimate(full.value, full.low, full.high),
        },
    )
    found, text = status("best_above_full", Evidence([marginal], [], {}))
    assert found == NOT_RESOLVED and "marginal intervals" in text


def test_plurality_is_not_tested_where_there_is_no_subnetwork_to_locate() -> None:
    """Issue 20 item 5: at step 77 the λ = 1e1 mask's r (0.592) barely exceeds the empty mask's
    (0.572): no plurality test there ('not applicable'); at step 330 it is tested."""
    model = ModelSummary("m", selected_lambda="1e1")
    interval = 0.003

    def r(value: float) -> Estimate:
        return Estimate(value, value - interval, value + interval)

    trajectory = CheckpointSummary(
        model="m",
        steps=[77, 330],
        plurality={"1e1": {77: False, 330: True}},
        mask_r={"1e1": {77: r(0.592), 330: r(0.9)}},
        empty_r={77: r(0.572), 330: r(0.6)},
    )
    found, text = status("first_mlp", Evidence([model], [trajectory], {}))
    assert found == HOLDS, text
    assert "plurality at 1 of 1 checkpoints" in text and "not applicable at step 77" in text
    tested = replace(trajectory, mask_r={"1e1": {77: r(0.8), 330: r(0.9)}})
    assert status("first_mlp", Evidence([model], [tested], {}))[0] == FAILS


def test_a_fit_below_the_stated_quality_does_not_decide() -> None:
    """Issue 20 item 11: three-point fits of r² 0.55–0.83 decide nothing; the fit-free fixed-λ
    series decides instead (the λ = 1e1 mask keeps more weights at the last step and reaches
    less r), or, for the peak, 'not resolved'."""
    steps = {0: 0.55, 1408: 0.83, 6000: 0.7}

    def r(value: float) -> Estimate:
        return Estimate(value, value - 0.002, value + 0.002)

    fields = {
        "fit_r2": steps,
        "fit_points": dict.fromkeys(steps, 3),
        "mask_r": {"1e1": {0: r(0.6), 1408: r(0.93), 6000: r(0.90)}},
        "kept": {"1e1": {0: 900.0, 1408: 1000.0, 6000: 1500.0}},
    }
    # the fits would say the opposite: r at the budget rises to the last checkpoint
    weak = _budgets(FULL, {2_000: {0: 0.5, 1408: 0.9, 6000: 0.95}}, **fields)
    found, text = status("decompression", weak)
    assert found == HOLDS, text
    assert "fit below r² 0.9" in text and "fit-free" in text
    assert status("peaks_later", weak)[0] == NOT_RESOLVED
    compacted = replace(weak.checkpoints[0], kept={"1e1": {0: 900.0, 1408: 1000.0, 6000: 800.0}})
    assert status("decompression", replace(weak, checkpoints=[compacted]))[0] == NOT_RESOLVED
    good = replace(weak.checkpoints[0], fit_r2=dict.fromkeys(steps, 0.95))
    assert status("decompression", replace(weak, checkpoints=[good]))[0] == FAILS


def test_table_2_controls_decide_on_the_r_of_the_paper_regime() -> None:
    """Issue 20 item 6: with 5% of eval positions unseen, clipping moves the full model's r by
    more than the paper's precision, so the controls, like every other claim, use the
    drop-unseen r (the old controls always used the clipped r). Replicates pair a control with
    the r it was scored as (the evaluate stage's masks, the controls stage's variants under their
    model keys), and only where their interval is the control's."""
    import polars as pl

    from bigram_subnetworks.analysis.scoring import percentile_interval
    from bigram_subnetworks.report.summary import control_values
    from bigram_subnetworks.report.tables import RunTables

    def draws(base: float) -> np.ndarray:
        return base + 0.001 * np.arange(20)

    sources = {  # control: (model key, target, λ, replicates)
        "full model": ("m", "reference", "neginf", draws(0.65)),
        "bigram subnetwork": ("m", "bigram", "0", draws(0.89)),
        "random init": ("m+step-0", "bigram", "0", draws(0.59)),
    }
    values = {
        "full model": (0.70, 0.66, "neginf"),
        "bigram subnetwork": (0.95, 0.90, "0"),
        "random init": (0.80, 0.60, "0"),
        "embeddings only": (0.40, 0.30, "inf"),
    }
    rows = []
    for control, (clipped, dropped, label) in values.items():
        low, high = dropped - 0.01, dropped + 0.01
        if control in ("full model", "random init"):  # stored from these replicates
            low, high = percentile_interval(sources[control][3])
        for metric, value in (
            ("bigram_r", clipped),
            ("bigram_r_dropinf", dropped),
            ("bigram_r_dropinf_low", low),
            ("bigram_r_dropinf_high", high),
            ("unseen_fraction", 0.05),
        ):
            rows.append(
                {
                    "model": "m",
                    "control": control,
                    "lambda": label,
                    "metric": metric,
                    "value": value,
                }
            )
    replicates = pl.DataFrame(
        [
            {
                "model": key,
                "step": None,
                "target": target,
                "lambda": label,
                "budget": None,
                "metric": "bigram_r_dropinf",
                "resample": i,
                "value": value,
            }
            for key, target, label, series in sources.values()
            for i, value in enumerate(series)
        ]
    )
    empty = pl.DataFrame()
    tables = RunTables(
        models=["m"],
        mask_metrics=empty,
        blocks=empty,
        overlap=empty,
        overlap_null=empty,
        ablations=empty,
        generations=empty,
        residual=empty,
        checkpoints=None,
        controls=pl.DataFrame(rows),
        selection={},
        model_info={},
        histories=empty,
        data_info={},
        benchmarks=empty,
        replicates=replicates,
    )
    found = control_values(tables)["m"]
    assert {name: e.value for name, e in found.items()} == {
        name: dropped for name, (_, dropped, _) in values.items()
    }
    assert found["full model"].paired and found["random init"].paired
    assert not found["bigram subnetwork"].paired  # its interval is not its replicates': not paired
    assert not found["embeddings only"].paired  # no replicates stored
