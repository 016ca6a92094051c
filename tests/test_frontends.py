"""Snakemake and DVC on a fresh copy of the workflow, without the shared smoke run: both run
exactly the registry's jobs, stop on a bad config in one line, take the configfile and the
overrides given, read the default profile; the workflow lints clean, asks for GPUs where there
are some and runs as a module of another workflow."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from bigram_subnetworks.config import load_config
from bigram_subnetworks.stages import (
    arguments,
    data_keys,
    job_fields,
    run_config_path,
    stages_for,
)
from projects import make_project, run, snakemake_jobs

pytestmark = pytest.mark.workflow
ROOT = Path(__file__).resolve().parents[1]


DVC_STAGES = """
import json
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo
stages = {}
for stage in Repo(".").index.stages:
    stages[stage.addressing] = {
        "cmd": stage.cmd,
        "outs": sorted(str(o.def_path) for o in stage.outs),
        "deps": sorted(
            str(d.def_path) for d in stage.deps if not isinstance(d, ParamsDependency)
        ),
    }
print(json.dumps(stages))
"""


def dvc_stages(project: Path) -> dict[str, dict[str, object]]:
    """Address -> command, outputs and (file) dependencies of every DVC stage."""
    return json.loads(run([sys.executable, "-c", DVC_STAGES], project).stdout)


def registry_commands(project: Path) -> set[str]:
    """Every job's command line as the registry writes it, for the project's params.yaml."""
    cfg = load_config(project / "params.yaml")
    return {
        " ".join(["bsn", stage.command, "--config", run_config_path(cfg), *args])
        for stage in stages_for(cfg, "snakemake")
        for args in (arguments(stage, cfg, job_fields(cfg, job)) for job in stage.jobs(cfg))
    }


def within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def test_both_front_ends_run_exactly_the_registrys_jobs(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    expected = registry_commands(project)
    snake = [job for job in snakemake_jobs(project, "--forceall") if job["cmd"]]
    assert {job["cmd"] for job in snake} == expected
    assert len(snake) == len(expected)  # one job per command
    dvc = dvc_stages(project)
    assert {stage["cmd"] for stage in dvc.values()} == expected | {dvc["config"]["cmd"]}
    # Both track the same files: DVC may track a folder (a model) where Snakemake tracks a file
    # in it (model.json), but neither has a file the other lacks. DVC's stages also depend on the
    # effective config, which Snakemake writes before any job (a param dependency in DVC).
    by_cmd = {stage["cmd"]: stage for stage in dvc.values()}
    for job in snake:
        stage = by_cmd[job["cmd"]]
        for key in ("deps", "outs"):
            uncovered = [p for p in job[key] if not any(within(p, d) for d in stage[key])]
            unused = [d for d in stage[key] if not any(within(p, d) for p in job[key])]
            assert uncovered == [] and unused == [], (job["cmd"], key)
    rules = [job["rule"] for job in snake]
    # smoke: 4 bigram + 1 full + 2 unigram λ, step 0 × 2 λ (step 60 reuses the main grid), 1
    # control; the 2 trigram λ in their own stage, after the trigram counts
    assert rules.count("train_mask") == 10
    assert rules.count("train_ngram_mask") == 2 and rules.count("ngram_stats") == 1
    assert "checkpoint_masks" not in rules


def test_invalid_config_stops_every_front_end_with_one_line(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("seed: 0", "seed: not-a-number"))
    expected = "params.yaml: seed: expected an integer, got 'not-a-number'"

    snake = run(["snakemake", "data", "-n"], project, check=False)
    assert snake.returncode != 0
    assert snake.stderr.strip().splitlines()[-1] == expected

    dvc = run(["dvc", "repro", "bigram_stats"], project, check=False)
    assert dvc.returncode != 0
    assert f"bsn config: error: {expected}" in dvc.stdout + dvc.stderr
    assert not (project / "data").exists() or not any((project / "data").rglob("*.parquet"))

    bsn = run(["bsn", "validate", "--config", "params.yaml"], project, check=False)
    assert bsn.returncode == 1
    assert bsn.stderr.strip() == f"bsn validate: error: {expected}"


def test_snakemake_takes_the_configfile_and_overrides_given(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", config="params.yaml")
    default = load_config(project / "params.yaml")
    corpus = next(job for job in snakemake_jobs(project, "data") if job["rule"] == "corpus")
    assert any(p.startswith("data/sotu-") for p in corpus["outs"])
    jobs = snakemake_jobs(project, "data", "--forceall", "--configfile", "config/smoke.yaml")
    corpus = next(job for job in jobs if job["rule"] == "corpus")
    assert "--config results/smoke/config.yaml" in str(corpus["cmd"])
    assert all("sotu-smoke-" in p for p in corpus["outs"])  # not merged into params.yaml
    # Snakemake's own override syntax, merged into the config file's values.
    run(["snakemake", "-n", "masks", "--config", 'masks={"lr": 0.02}'], project)
    effective = yaml.safe_load((project / run_config_path(default)).read_text())
    assert effective["masks"]["lr"] == 0.02
    assert effective["masks"]["temp_increase"] == default.masks.temp_increase


SETTINGS = """
import json, sys
from snakemake.cli import parse_args
_, args = parse_args(sys.argv[1:])
keys = ("cores", "rerun_incomplete", "max_checksum_file_size", "executor", "jobs")
print(json.dumps({key: getattr(args, key) for key in keys}))
"""


def snakemake_settings(project: Path, *args: str) -> dict[str, object]:
    """Settings of `snakemake <args>` in `project` once Snakemake has applied its profiles."""
    return json.loads(run([sys.executable, "-c", SETTINGS, *args], project).stdout)


def test_snakemake_alone_in_the_repository_root_reads_the_default_profile(tmp_path: Path) -> None:
    """The top-level Snakefile finds profiles/default without --profile: every core, continue an
    interrupted run, content checksums of inputs up to the profile's size; the SLURM profile keeps
    them. Snakemake's own defaults (`--workflow-profile none`) differ in each."""
    project = make_project(tmp_path / "p")
    profile = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
    assert profile["cores"] == "all" and profile["rerun-incomplete"] is True
    cores = os.cpu_count()
    local = {
        "cores": cores,
        "rerun_incomplete": True,
        "max_checksum_file_size": profile["max-checksum-file-size"],
        "executor": None,
        "jobs": None,
    }
    assert snakemake_settings(project) == local
    bare = snakemake_settings(project, "--workflow-profile", "none")
    assert bare["cores"] is None and bare["rerun_incomplete"] is False
    assert bare["max_checksum_file_size"] < profile["max-checksum-file-size"]
    cluster = snakemake_settings(project, "--profile", "profiles/slurm")
    assert cluster == {**local, "executor": "slurm", "jobs": 100}

    dry = run(["snakemake", "-n", "data"], project)
    assert "workflow specific profile profiles/default" in dry.stderr
    tokenize = next(block for block in dry.stdout.split("\n\n") if "rule tokenize:" in block)
    assert cores == 1 or f"threads: {cores}" in tokenize  # a dry run leaves out "threads: 1"


def test_snakemake_lint_finds_nothing_to_improve(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    lint = run(["snakemake", "--lint"], project, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_on_a_machine_with_gpus_torch_jobs_take_one_gpu_each_and_a_share_of_the_cores(
    tmp_path: Path,
) -> None:
    project = make_project(tmp_path / "p")
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("threads: 1", "threads: null"))
    env = ["env", "CUDA_VISIBLE_DEVICES=0,1"]
    text = run([*env, "snakemake", "-n", "--cores", "8", "masks"], project).stdout
    cores = min(8, os.cpu_count() or 1)  # Snakemake's cores, capped at the machine's

    def threads(block: str) -> int:
        found = re.search(r"threads: (\d+)", block)
        return int(found.group(1)) if found else 1  # a dry run leaves out "threads: 1"

    mask_jobs = [block for block in text.split("\n\n") if "rule train_mask:" in block]
    assert mask_jobs and all("gpu=1" in b and threads(b) == max(1, cores // 2) for b in mask_jobs)
    data_jobs = [block for block in text.split("\n\n") if "rule tokenize:" in block]
    assert data_jobs and threads(data_jobs[0]) == cores and "gpu=0" in data_jobs[0]
    cpu = run(["snakemake", "-n", "--cores", "8", "masks"], project).stdout
    mask_jobs = [block for block in cpu.split("\n\n") if "rule train_mask:" in block]
    assert all("gpu=0" in b and threads(b) == cores for b in mask_jobs)
    # A config that fixes the threads (results depend on them) keeps them on any machine.
    params.write_text(params.read_text().replace("threads: null", "threads: 1"))
    fixed = run([*env, "snakemake", "-n", "--cores", "8", "masks"], project).stdout
    mask_jobs = [block for block in fixed.split("\n\n") if "rule train_mask:" in block]
    assert all("gpu=1" in b and threads(b) == 1 for b in mask_jobs)


def test_the_workflow_runs_as_a_module_of_another_workflow(tmp_path: Path) -> None:
    """Another workflow imports this one with `module` and its own config: the data stages run
    and the rest of the pipeline is planned."""
    outer = tmp_path / "outer"
    outer.mkdir()
    raw = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    raw["run"] = "from-outer"
    (outer / "config.yaml").write_text(yaml.safe_dump({"bigram_subnetworks": raw}))
    (outer / "Snakefile").write_text(
        'configfile: "config.yaml"\n\n'
        "module bsn:\n"
        f'    snakefile: "{ROOT / "Snakefile"}"\n'
        '    config: config["bigram_subnetworks"]\n\n'
        "use rule * from bsn as bsn_*\n"
    )
    run(["snakemake", "--cores", "2", "bsn_data"], outer)
    keys = data_keys(load_config(ROOT / "config" / "smoke.yaml"))
    assert (outer / "data" / keys["data"] / "bigrams.parquet").is_file()
    planned = run(["snakemake", "-n", "--cores", "2", "bsn_all"], outer).stdout
    assert "bsn_train_mask" in planned and "results/from-outer/report/index.html" in planned
    assert (outer / "results" / "from-outer" / "config.yaml").is_file()
