"""A Hub model's whole pipeline with the network blocked (its own module, so that a parallel test
run schedules it beside the smoke run of test_workflow.py rather than after it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from hub_cache import build_hub_cache
from projects import blocked, make_project, run

pytestmark = pytest.mark.workflow


def test_a_hub_model_runs_end_to_end_with_the_network_blocked(
    tmp_path: Path, small_bpe: Any
) -> None:
    """A config naming a Hub model (a real cache layout built here, several revisions) runs the
    whole pipeline with the network blocked: the fetch stage resolves every revision from the
    cache and records its commit; every other job reads the cache offline. The model is a tiny
    Llama: grouped-query attention, a gated MLP and tied embeddings, through every analysis."""
    project = make_project(tmp_path / "p")
    cache = tmp_path / "hub"
    revisions = {"main": 3, "step0": 1, "step30": 3}
    commits = build_hub_cache(cache, "test/tiny", revisions, small_bpe, family="llama")
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw |= {"run": "hub", "hub_cache": str(cache)}
    raw["tokenizer"] = {"name": "tiny", "source": "pretrained", "model": "test/tiny"}
    raw["models"] = {"tiny": {"source": "huggingface", "id": "test/tiny", "revision": "step30"}}
    raw["checkpoints"] = {"models": ["tiny"], "steps": [0, 30], "lambdas": ["0"], "budgets": [500]}
    # No unigram or trigram grid: the smoke run covers their jobs; this test is about the Hub.
    raw["lambdas"] = {"bigram": raw["lambdas"]["bigram"], "full": raw["lambdas"]["full"]}
    (project / "hub.yaml").write_text(yaml.safe_dump(raw))
    run(blocked(["snakemake", "--configfile", "hub.yaml"]), project, timeout=900)
    info = json.loads((project / "results/hub/models/tiny/model.json").read_text())
    assert (
        info["commit"] == commits["step30"]
        and info["checkpoints"]["0"]["commit"] == commits["step0"]
    )
    assert (project / "results/hub/report/index.html").is_file()
    mask = project / "results/hub/masks/tiny+step-0/bigram/lambda-0.json"
    assert json.loads(mask.read_text())["commit"] == commits["step0"]
    blocks = pq.read_table(project / "results/hub/metrics/blocks.parquet").to_pylist()
    assert {b["kind"] for b in blocks} >= {"Q", "K", "V", "O", "MLP-in", "MLP-out"}
    controls = pq.read_table(project / "results/hub/metrics/controls.parquet").to_pylist()
    assert len({c["control"] for c in controls}) == 7

    # A revision the cache does not hold stops the run at the fetch stage, in one line.
    raw["models"]["tiny"]["revision"] = "step999"
    raw["run"] = "missing"
    (project / "missing.yaml").write_text(yaml.safe_dump(raw))
    failed = run(blocked(["snakemake", "--configfile", "missing.yaml"]), project, check=False)
    assert failed.returncode != 0
    line = "bsn fetch: error: model test/tiny: revision 'step999' not found"
    assert line in failed.stdout + failed.stderr
    assert not (project / "results/missing/models").exists()
