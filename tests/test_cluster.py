"""The smoke pipeline on a real SLURM cluster, through the project's SLURM profile.

`make test-cluster` starts a single-node cluster with accounting (tests/cluster/slurm.sh) and runs
this module with BSN_REQUIRE_SLURM=1, so a missing or broken cluster fails. Without it (plain
`make test`) the test skips, saying why, even where a cluster is reachable: it submits jobs to the
cluster it finds (so `make test` on a real cluster's login node submits nothing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from projects import ROOT, make_project, run

pytestmark = pytest.mark.cluster

SITE = {"slurm_partition": "debug", "runtime": 20, "mem_mb": 1000}


def cluster_problem() -> str | None:
    """Why no usable SLURM cluster is reachable, or None when one is."""
    for tool in ("sbatch", "sinfo", "sacct"):
        if shutil.which(tool) is None:
            return f"{tool} not found (make test-cluster installs and starts a cluster)"
    try:
        sinfo = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20
        )
        sacct = subprocess.run(["sacct", "-n", "-X"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo or sacct timed out"
    if sinfo.returncode != 0 or not {"idle", "mix"} & set(sinfo.stdout.split()):
        return f"no idle SLURM node: {sinfo.stderr.strip() or sinfo.stdout.strip()}"
    if sacct.returncode != 0:
        return f"sacct does not work (job status needs accounting): {sacct.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    if not os.environ.get("BSN_REQUIRE_SLURM"):
        pytest.skip("submits SLURM jobs: runs under make test-cluster (BSN_REQUIRE_SLURM=1)")
    problem = cluster_problem()
    if problem is not None:
        pytest.fail(f"SLURM cluster required but not usable: {problem}")


def site_profile(where: Path) -> Path:
    """The project's SLURM profile with this test cluster's site settings: one partition, no GPU,
    small limits and fast status checks. Every other key is the profile's own."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text("utf-8"))
    profile["default-resources"] = {**profile["default-resources"], **SITE}
    profile["set-resources"] = {rule: dict(SITE) for rule in profile["set-resources"]}
    profile["set-threads"] = {rule: 1 for rule in profile["set-threads"]}
    # More jobs than cores: SLURM starts a queued job the moment one ends, while Snakemake would
    # only submit it at its next status check (seconds later, and longer the longer none ends).
    profile["jobs"] = 4 * (os.cpu_count() or 1)
    profile["slurm-init-seconds-before-status-checks"] = 3
    folder = where / "profiles" / "slurm-site"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")
    return folder


def test_the_smoke_pipeline_runs_under_slurm(cluster: None, tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    config = yaml.safe_load((project / "params.yaml").read_text("utf-8"))
    config["device"] = "cpu"  # the test node has no GPU: the torch rules ask for none
    (project / "params.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    profile = site_profile(tmp_path)

    result = run(["snakemake", "--profile", str(profile)], project, check=False, timeout=1500)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert (project / "results/smoke/report/index.html").is_file()

    # Every job really ran under SLURM: sacct lists one completed job per benchmark file, each
    # named after this Snakemake run, and none that failed.
    benchmarks = list((project / "results/smoke/benchmarks").rglob("*.tsv"))
    output = (result.stdout + result.stderr).splitlines()
    run_ids = {line.split()[-1] for line in output if "SLURM run ID" in line}
    assert len(run_ids) == 1, "the SLURM executor did not run"

    accounting = run(
        ["sacct", "-X", "-n", "-P", "-S", "now-2hours", "-o", "JobID,JobName,State"], project
    ).stdout
    jobs = [line.split("|") for line in accounting.splitlines() if line.strip()]
    ours = [job for job in jobs if job[1] in run_ids]
    assert len([job for job in ours if job[2] == "COMPLETED"]) >= len(benchmarks) > 10, accounting
    assert all(job[2] == "COMPLETED" for job in ours), accounting
    assert "Nothing to be done" in run(["snakemake", "-n"], project).stdout
