"""`dvc exp run -S` on a dvc.yaml generated for a config other than params.yaml: the bare form
edits params.yaml, which such a pipeline never reads, so it must stop loudly instead of rerunning
nothing; the form naming the config file changes the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from projects import make_project, run

pytestmark = pytest.mark.workflow


def committed_smoke_pipeline(where: Path) -> Path:
    """The project with the default params.yaml and dvc.yaml generated for config/smoke.yaml."""
    project = make_project(where, config="params.yaml")
    run(["bsn", "dvc", "--config", "config/smoke.yaml"], project)
    for setting in (["user.name", "test"], ["user.email", "test@example.org"]):
        run(["git", "config", *setting], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "smoke pipeline"], project)
    return project


def overlap_draws(project: Path) -> int:
    config = yaml.safe_load((project / "results" / "smoke" / "config.yaml").read_text())
    return int(config["analysis"]["overlap_draws"])


def test_a_bare_set_param_on_another_configs_pipeline_fails_naming_the_right_form(
    tmp_path: Path,
) -> None:
    project = committed_smoke_pipeline(tmp_path / "p")
    header = (project / "dvc.yaml").read_text().splitlines()[3]
    assert "dvc exp run -S config/smoke.yaml:KEY=VALUE" in header

    bare = run(["dvc", "exp", "run", "-S", "analysis.overlap_draws=500", "config"], project, False)
    assert bare.returncode != 0, bare.stdout
    output = bare.stdout + bare.stderr
    assert "params.yaml changed, but dvc.yaml runs config/smoke.yaml" in output
    assert "dvc exp run -S config/smoke.yaml:KEY=VALUE" in output
    assert "Experiment results have been applied" not in output

    run(["git", "checkout", "params.yaml"], project)
    named = ["dvc", "exp", "run", "-S", "config/smoke.yaml:analysis.overlap_draws=500", "config"]
    run(named, project)
    assert overlap_draws(project) == 500


def test_the_default_pipeline_takes_the_bare_form(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", config="params.yaml")
    text = (project / "dvc.yaml").read_text()
    assert "--default-params" not in text
    assert "An experiment on one key: dvc exp run -S KEY=VALUE" in text
