"""`dvc metrics diff` and `dvc plots diff` between two revisions of the smoke run: metrics.json
and the plot tables are written by the report's own functions from two synthetic evidence sets
(the report tests' run builder) and committed twice, under the dvc.yaml generated for the smoke
config; DVC must show exactly the numbers that changed, under the same keys, and plot both
revisions on labelled axes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bigram_subnetworks import artifacts as A
from bigram_subnetworks.config import Config, load_config
from bigram_subnetworks.frontends import PLOTS
from bigram_subnetworks.io import write_json
from bigram_subnetworks.masks.train import TrainingLog, write_curve
from bigram_subnetworks.report.build import findings, headline_metrics, plot_tables
from bigram_subnetworks.report.compare import flatten, report_inputs
from bigram_subnetworks.report.tables import load_run
from projects import make_project, run
from test_report import Spec, write_run

# the second revision: a lower full-model r, a weaker overlap (which no longer holds) and a more
# harmful optimal removal (the size-matched sweep's conditions change with it)
CHANGED = {
    "full_r": 0.60,
    "overlap_ratio": 2.0,
    "overlap_p": 0.001,
    "surprisal": {**Spec().surprisal, "optimal removed": 7.2},
}
SPARSITY, CHECKPOINTS = (next(iter(p)) for p in PLOTS)

pytestmark = pytest.mark.slow  # DVC's start-up, four times (about 30 s on 2 busy cores)


def _curve(project: Path, cfg: Config) -> Path:
    return project / A.MASK_CURVE.render(
        run=cfg.run, model=next(iter(cfg.models)), target="full", lam=cfg.lambdas.full[0]
    )


def _encodings(spec: Any, axis: str) -> Iterator[dict[str, Any]]:
    """Every `axis` encoding in a Vega-Lite spec, layers included."""
    if isinstance(spec, dict):
        encoding = spec.get("encoding", {})
        if axis in encoding:
            yield encoding[axis]
        for value in spec.values():
            yield from _encodings(value, axis)
    elif isinstance(spec, list):
        for value in spec:
            yield from _encodings(value, axis)


def commit_revision(project: Path, scratch: Path, cfg: Config, spec: Spec, loss: float) -> dict:
    """Write the report's metrics.json and plot tables (and one mask curve) for `spec` into the
    project and commit them; returns metrics.json's content."""
    run_dir, _ = write_run(scratch, cfg, spec)
    tables = load_run(cfg, report_inputs(cfg, run_dir))
    models, checkpoints, found = findings(tables)
    metrics = headline_metrics(models, checkpoints, found)
    (project / A.RUN_METRICS.render(run=cfg.run)).parent.mkdir(parents=True, exist_ok=True)
    write_json(metrics, project / A.RUN_METRICS.render(run=cfg.run))
    for name, text in plot_tables(tables).items():
        path = project / A.REPORT_PLOT.render(run=cfg.run, plot=name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    curve = _curve(project, cfg)
    curve.parent.mkdir(parents=True, exist_ok=True)
    write_curve(curve, TrainingLog([loss, loss - 0.5], [0.1] * 2, [0.5] * 2, [0.1] * 2, [1.0] * 2))
    run(["git", "add", "-f", "-A"], project)
    run(["git", "commit", "-qm", f"smoke run, full r {spec.full_r}"], project)
    return json.loads(json.dumps(metrics))


@pytest.fixture(scope="module")
def revisions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("dvc_diff")
    project = make_project(root / "project")
    for setting in (["user.name", "test"], ["user.email", "test@example.org"]):
        run(["git", "config", *setting], project)
    cfg = load_config(project / "params.yaml")
    old = commit_revision(project, root / "old", cfg, Spec(), 5.0)
    new = commit_revision(project, root / "new", cfg, replace(Spec(), **CHANGED), 4.0)
    return project, old, new


def test_metrics_diff_shows_the_changed_numbers_under_stable_keys(
    revisions: tuple[Path, dict, dict],
) -> None:
    project, old, new = revisions
    assert flatten(old).keys() == flatten(new).keys()  # the same keys in both revisions
    result = run(["dvc", "metrics", "diff", "HEAD~1", "HEAD", "--json"], project)
    (path, changes), *others = json.loads(result.stdout).items()
    assert path == "results/smoke/metrics.json" and not others
    changed = {k for k, v in flatten(new).items() if flatten(old)[k] != v}
    assert set(changes) == changed  # nothing added or dropped, nothing unchanged listed
    full = changes["models.neox-2x16.full_model_r"]
    assert full["old"] == pytest.approx(0.70) and full["new"] == pytest.approx(0.60)
    assert full["diff"] == pytest.approx(-0.10)
    assert changes["models.neox-2x16.full_model_r_interval.low"]["new"] == pytest.approx(0.595)
    assert changes["claims.does_not_hold"]["diff"] >= 1
    for key in flatten(new):  # DVC's dotted paths: every part a plain ASCII key
        assert all(re.fullmatch(r"[A-Za-z0-9_-]+", part) for part in key.split(".")), key
    assert "models.neox-2x16.ablation_surprisal_bits.optimal_removed_lambda_1e1" in changed


def test_plots_diff_overlays_both_revisions_on_labelled_axes(
    revisions: tuple[Path, dict, dict],
) -> None:
    project, _, _ = revisions
    curve = _curve(project, load_config(project / "params.yaml")).relative_to(project)
    targets = [SPARSITY, CHECKPOINTS, curve.as_posix()]
    result = run(
        ["dvc", "plots", "diff", "HEAD~1", "HEAD", "--json", "--targets", *targets], project
    )
    data = json.loads(result.stdout)
    assert "errors" not in data, data.get("errors")
    plots = data["data"]
    assert set(plots) == set(targets)
    for name, (x, y) in {
        SPARSITY: ("active_parameters", "bigram_r"),
        CHECKPOINTS: ("step", "bigram_r"),
        curve.as_posix(): ("step", "loss"),
    }.items():
        (plot,) = plots[name]
        assert plot["revisions"] == ["HEAD~1", "HEAD"]
        spec = plot["content"]
        for axis, field in (("x", x), ("y", y)):  # every layer's axis: the field, labelled
            found = list(_encodings(spec, axis))
            assert found and all(e["field"] == field and e["title"] != field for e in found)
        assert spec["encoding"]["color"]["field"] == "rev"
        rows = spec["data"]["values"]
        assert {r["rev"] for r in rows} == {"HEAD~1", "HEAD"}
        assert all(r[x] != "" and r[y] != "" for r in rows)
    sparsity = plots[SPARSITY][0]["content"]
    assert sparsity["mark"]["type"] == "point"  # several models and λ series: not one line
    full = {
        r["rev"]: float(r["bigram_r"])
        for r in sparsity["data"]["values"]
        if r["target"] == "bigram" and r["lambda"] == "neginf"
    }
    assert full == {"HEAD~1": pytest.approx(0.70), "HEAD": pytest.approx(0.60)}
    losses = {
        r["rev"]: float(r["loss"])
        for r in plots[curve.as_posix()][0]["content"]["data"]["values"]
        if r["step"] == "1"
    }
    assert losses == {"HEAD~1": 5.0, "HEAD": 4.0}
