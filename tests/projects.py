"""A throwaway copy of the workflow to run Snakemake, DVC or SLURM on (used by several tests)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bigram_subnetworks.config import load_config
from bigram_subnetworks.frontends import dvc_yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT_FILES = ["Snakefile", "profiles", "workflow", "config", ".dvcignore", "environment.yml"]


def run(
    cmd: list[str], cwd: Path, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a command with the project's virtual environment first on PATH."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{result.stdout}\n{result.stderr}")
    return result


def make_project(where: Path, config: str = "config/smoke.yaml") -> Path:
    """A copy of the workflow with `config` as its params.yaml and dvc.yaml generated for it (as
    `bsn dvc --config params.yaml` does), in a fresh git repository."""
    where.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, where / name)
        else:
            shutil.copy2(source, where / name)
    (where / ".dvc").mkdir()
    shutil.copy2(ROOT / ".dvc" / "config", where / ".dvc" / "config")
    shutil.copy2(ROOT / config, where / "params.yaml")
    text = dvc_yaml(load_config(where / "params.yaml"), "params.yaml")
    (where / "dvc.yaml").write_text(text, encoding="utf-8")
    run(["git", "init", "-q"], where)
    return where


def blocked(command: list[str]) -> list[str]:
    """A command without network access: a fresh network namespace (root), or else every HTTP
    request sent to a closed port."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"]).returncode == 0:
        return ["unshare", "-n", *command]
    return ["env", "HTTPS_PROXY=http://127.0.0.1:9", "HTTP_PROXY=http://127.0.0.1:9", *command]


def chromium() -> str:
    """The headless browser of the report tests (the test skips, saying why, without one)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")


def snakemake_jobs(project: Path, *args: str) -> list[dict[str, object]]:
    """Rule, reason, shell command, outputs (incl. log) and inputs of every job of a dry run."""
    text = run(["snakemake", "-n", "-p", *args], project).stdout
    jobs: list[dict[str, object]] = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", text):
        header = re.match(r"(?:local)?rule (\w+):\n", block)
        if not header:
            continue
        job: dict[str, object] = {"rule": header.group(1), "outs": set(), "deps": set()}
        for key, value in re.findall(r"^ {4}(input|output|log|reason): (.*)$", block, re.M):
            if key == "reason":
                job["reason"] = value
            else:
                job["deps" if key == "input" else "outs"] |= set(value.split(", "))
        command = re.search(r"^(?:Shell command: )?(bsn .*)$", block, re.M)
        job["cmd"] = command.group(1).strip() if command else None
        jobs.append(job)
    return jobs
