"""Snakemake and DVC run the registry's stages and produce the same artifacts on the smoke config;
a change reruns exactly the stages that read what changed, in both front-ends. Every test here
reads the one shared smoke run (tests that need none are in test_frontends.py, so that a parallel
run schedules them beside it)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from bigram_subnetworks.artifacts import REPORT_FIGURES
from bigram_subnetworks.io import parquet_seed
from projects import PROJECT_FILES, chromium, make_project, run, snakemake_jobs

pytestmark = pytest.mark.workflow
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class SmokeHistory:
    """How the shared smoke run got done: two interrupted runs, each continued by the plain
    command (no --rerun-incomplete, no --unlock), and a second run started beside a live one."""

    project: Path
    ctrl_c: subprocess.CompletedProcess[str]  # Ctrl-C while a mask job ran
    killed: subprocess.CompletedProcess[str]  # SIGKILL of the process group while one ran
    killed_pid: int
    left_locks: list[str]  # Snakemake's lock files the SIGKILL left behind
    beside: subprocess.CompletedProcess[str]  # `snakemake` started while the killed run lived
    beside_seconds: float
    alive_after_beside: bool  # the live run went on
    continued: subprocess.CompletedProcess[str]  # the same command after the SIGKILL


@pytest.fixture(scope="session")
def dvc_repro_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    """`dvc repro` of the whole smoke pipeline in a project of its own, started before the
    Snakemake smoke run so the two run side by side (compared byte for byte below)."""
    project = make_project(tmp_path_factory.mktemp("dvc") / "p")
    log = (project.parent / "dvc-repro.log").open("w")
    process = subprocess.Popen(
        ["dvc", "repro"], cwd=project, env=environment(), text=True, start_new_session=True,
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    yield project, process
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    log.close()


@pytest.fixture(scope="session")
def smoke_history(
    tmp_path_factory: pytest.TempPathFactory, dvc_repro_run: tuple[Path, Any]
) -> SmokeHistory:
    """The whole smoke pipeline with Snakemake (the report included), shared by every test that
    reads a finished run: interrupted by Ctrl-C during a mask job, then by SIGKILL of the whole
    process group during one (an OOM kill, a dead SSH session, a cluster's time limit; it leaves
    Snakemake's lock behind); while that run lived, a second `snakemake` was started beside it."""
    project = make_project(tmp_path_factory.mktemp("smoke") / "p")
    first = start_snakemake(project)
    wait_for_a_mask_job(first)
    os.killpg(first.pid, signal.SIGINT)
    ctrl_c = finish(first)

    second = start_snakemake(project)
    wait_for_a_mask_job(second)
    started = time.monotonic()
    beside = run(["snakemake"], project, check=False, timeout=300)
    beside_seconds = time.monotonic() - started
    alive = second.poll() is None
    wait_for_a_mask_job(second)
    os.killpg(second.pid, signal.SIGKILL)
    killed = finish(second)
    left = sorted(p.name for p in (project / ".snakemake" / "locks").glob("*.lock"))

    continued = run(["snakemake"], project, timeout=900)
    return SmokeHistory(
        project, ctrl_c, killed, second.pid, left, beside, beside_seconds, alive, continued
    )


@pytest.fixture(scope="session")
def smoke_run(smoke_history: SmokeHistory) -> Path:
    """The finished smoke project (never change it: take `smoke_copy`)."""
    return smoke_history.project


@pytest.fixture
def smoke_copy(smoke_run: Path, tmp_path: Path) -> Path:
    """A copy of the finished smoke project (git, DVC and Snakemake records included), for a test
    that changes it."""
    copy = tmp_path / "p"
    shutil.copytree(smoke_run, copy, symlinks=True)
    return copy


def environment() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def mask_jobs_of(session: int) -> set[int]:
    """Process ids of the `bsn train-mask` jobs in a session (read from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[3]) == session and b"train-mask" in cmdline:
            found.add(int(stat.parent.name))
    return found


def ctrl_c_reaches_it() -> None:
    """SIGINT as in a terminal: a test run in the background (`make test &`) inherits it ignored,
    and Python (so Snakemake) would then never see it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_snakemake(project: Path) -> subprocess.Popen[str]:
    """`snakemake` in a session (process group) of its own, as a terminal runs it."""
    return subprocess.Popen(
        ["snakemake"], cwd=project, env=environment(), text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=ctrl_c_reaches_it,
    )  # fmt: skip


def wait_for_a_mask_job(process: subprocess.Popen[str]) -> None:
    """Return once a mask job of the run has been running for a second (loading its model or
    training; smoke masks train for less than a second, too short to wait for a saved state)."""
    deadline = time.monotonic() + 600
    first_seen: dict[int, float] = {}
    while process.poll() is None and time.monotonic() < deadline:
        now = time.monotonic()
        first_seen = {pid: first_seen.get(pid, now) for pid in mask_jobs_of(process.pid)}
        if any(now - seen >= 1.0 for seen in first_seen.values()):
            return
        time.sleep(0.05)
    raise AssertionError("the run ended before a mask job ran for a second")


def finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    output, _ = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


def test_ctrl_c_during_a_mask_job_then_the_same_command_continues(
    smoke_history: SmokeHistory,
) -> None:
    assert smoke_history.ctrl_c.returncode != 0, smoke_history.ctrl_c.stdout[-3000:]
    assert "Nothing to be done" not in smoke_history.continued.stdout


def test_sigkill_of_the_group_leaves_a_lock_the_same_command_releases(
    smoke_history: SmokeHistory,
) -> None:
    assert smoke_history.killed.returncode == -signal.SIGKILL
    assert smoke_history.left_locks  # Snakemake's own lock, which used to stop the next run
    assert "released the stale lock of an interrupted run" in smoke_history.continued.stderr
    assert (smoke_history.project / "results/smoke/report/index.html").is_file()
    assert not list((smoke_history.project / ".snakemake" / "locks").glob("*.lock"))


def test_a_run_beside_a_live_one_stops_in_one_line_naming_it(smoke_history: SmokeHistory) -> None:
    beside = smoke_history.beside
    assert beside.returncode != 0
    line = beside.stderr.strip().splitlines()[-1]
    project = smoke_history.project
    pid = smoke_history.killed_pid
    assert re.fullmatch(
        rf"{re.escape(str(project))}: another run of this workflow is active here \(pid {pid} "
        r"since \d\d:\d\d:\d\d: snakemake\); wait for it to finish, or stop it and run the same "
        r"command again",
        line,
    ), line
    assert smoke_history.alive_after_beside  # the live run was not disturbed
    assert "bsn " not in beside.stdout + beside.stderr  # it started no job
    assert smoke_history.beside_seconds < 120


def test_smoke_run_trains_its_models_and_every_mask(smoke_run: Path) -> None:
    project = smoke_run
    model_dir = project / "results" / "smoke" / "models" / "neox-2x16"
    checkpoints = sorted(p.name for p in model_dir.glob("step-*"))
    assert len(checkpoints) >= 6 and "step-0" in checkpoints
    for folder in [model_dir / "final", *(model_dir / c for c in checkpoints)]:
        assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    info = json.loads((model_dir / "model.json").read_text())
    assert info["final_eval_loss"] > 0 and info["bigram_baseline"]["cross_entropy"] > 0
    assert info["final_step"] == 60

    masks_dir = project / "results" / "smoke" / "masks"
    masks = sorted(m.relative_to(masks_dir).as_posix() for m in masks_dir.rglob("*.safetensors"))
    assert masks == [
        *(f"neox-2x16+random-body/bigram/lambda-{lam}.safetensors" for lam in ("0",)),
        *(f"neox-2x16+step-0/bigram/lambda-{lam}.safetensors" for lam in ("0", "1e1")),
        *(f"neox-2x16/bigram/lambda-{lam}.safetensors" for lam in ("0", "1e1", "inf", "neginf")),
        "neox-2x16/full/lambda-1e1.safetensors",
        *(f"neox-2x16/trigram/lambda-{lam}.safetensors" for lam in ("0", "1e1")),
        *(f"neox-2x16/unigram/lambda-{lam}.safetensors" for lam in ("0", "1e1")),
    ]
    for mask in masks:
        log = json.loads((masks_dir / mask).with_suffix(".json").read_text())
        assert log["model"] == "neox-2x16" and log["weights_sha256"]
        assert len(log["history"]) == log["attempts"]
    benchmarks = list((project / "results" / "smoke" / "benchmarks").rglob("*.tsv"))
    # pretrain, twelve masks, eight analysis stages (ngrams among them) and the report
    assert len(benchmarks) == 22


def test_smoke_run_writes_every_analysis_table(smoke_run: Path) -> None:
    metrics = smoke_run / "results" / "smoke" / "metrics"
    tables = ["masks", "blocks", "overlap", "ablations", "generations", "residual"]
    tables += ["checkpoints", "controls"]
    tables += ["masks_replicates", "checkpoints_replicates", "controls_replicates"]  # paired
    for name in tables:
        assert pq.read_metadata(metrics / f"{name}.parquet").num_rows > 0, name
        assert parquet_seed(metrics / f"{name}.parquet") == 0, name  # the config's seed
    selection = json.loads((smoke_run / "results" / "smoke" / "selection.json").read_text())
    chosen = selection["models"]["neox-2x16"]
    assert chosen["bigram"]["lambda"] in ("0", "1e1")
    # n = 1, 2, 3: each order's r (and its back-off variant) for every mask, and its selection
    assert sorted(chosen["orders"]) == ["bigram", "trigram", "unigram"]  # JSON: sorted keys
    assert chosen["orders"]["bigram"]["lambda"] == chosen["bigram"]["lambda"]
    scored = pq.read_table(metrics / "masks.parquet").to_pylist()
    for target in chosen["orders"]:
        backoff = ("r_backoff",) if target == "trigram" else ()  # n <= 2: the model itself
        for metric in ("r", "r_dropinf", *backoff, "unseen_context_fraction"):
            found = [row for row in scored if row["metric"] == f"{target}_{metric}"]
            assert len(found) == 11, (target, metric)  # 9 masks, the full model, the empty mask
    unseen = {row["metric"]: row["value"] for row in scored if row["target"] == "reference"}
    assert unseen["trigram_unseen_context_fraction"] > unseen["bigram_unseen_context_fraction"]
    # The null draws are kept for the selected pair, which exists only if an optimal mask keeps
    # more weights than the selected bigram mask.
    null_rows = pq.read_metadata(metrics / "overlap_null.parquet").num_rows
    assert null_rows == (10_000 if chosen["optimal"] else 0)

    # The random-initialisation control is the step-0 checkpoint's λ = 0 mask.
    controls = pq.read_table(metrics / "controls.parquet").to_pylist()
    r = {c["control"]: c["value"] for c in controls if c["metric"] == "bigram_r"}
    assert len(r) == 7
    steps = pq.read_table(metrics / "checkpoints.parquet").to_pylist()
    step0 = next(
        row["value"]
        for row in steps
        if (row["step"], row["target"], row["lambda"], row["metric"])
        == (0, "bigram", "0", "bigram_r")
    )
    assert r["random init"] == step0


def test_a_finished_run_schedules_nothing(smoke_run: Path) -> None:
    assert "Nothing to be done" in run(["snakemake", "-n"], smoke_run).stdout


def rendered_images(page: Path, profile: Path) -> tuple[int, int]:
    """(images loaded, images) of an HTML page rendered by headless Chromium."""
    browser = chromium()
    probe = page.with_name("image-probe.html")
    counter = (
        "<script>addEventListener('load', () => { const all = [...document.images];"
        " const ok = all.filter(i => i.complete && i.naturalWidth > 0).length;"
        " document.body.insertAdjacentHTML('beforeend',"
        ' `<pre id="image-probe">${ok}/${all.length}</pre>`); });</script>'
    )
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", counter + "</body>"))
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}"]
    command += ["--virtual-time-budget=10000", "--dump-dom", probe.resolve().as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    found = re.search(r'id="image-probe">(\d+)/(\d+)<', result.stdout)
    assert found, f"Chromium rendered nothing:\n{result.stderr[-2000:]}"
    return int(found.group(1)), int(found.group(2))


def test_the_report_renders_in_a_browser_with_every_image(smoke_run: Path, tmp_path: Path) -> None:
    report = smoke_run / "results" / "smoke" / "report"
    figures = sorted(report.glob("figures/*.png"))
    assert {p.stem for p in figures} == set(REPORT_FIGURES)  # the smoke config has checkpoints
    html = (report / "index.html").read_text("utf-8")
    assert html.count('src="data:image/png;base64,') == len(figures)  # self-contained
    metrics = json.loads((smoke_run / "results" / "smoke" / "metrics.json").read_text("utf-8"))
    assert set(metrics["models"]) == {"neox-2x16"}
    loaded, images = rendered_images(report / "index.html", tmp_path / "profile")
    assert images == len(figures) and loaded == images


def test_dvc_reads_the_report_metrics_and_plots(smoke_run: Path) -> None:
    metrics = run(["dvc", "metrics", "show", "--json"], smoke_run).stdout
    assert "selected_r" in metrics or "full_model_r" in metrics
    plots = run(["dvc", "plots", "show", "--json"], smoke_run).stdout
    assert "bigram r against active parameters" in plots and "bigram r across checkpoints" in plots
    assert '"bigram_r"' in plots and '"active_parameters"' in plots


def caption_phrase(caption: str, words: int = 3) -> str:
    """The caption's first run of plain words (letters, digits, hyphens), which survives any
    HTML or JSON escaping of the caption."""
    tokens = caption.split()
    for start in range(len(tokens) - words + 1):
        window = tokens[start : start + words]
        if all(re.fullmatch(r"[A-Za-z0-9-]+", t) for t in window):
            return " ".join(window)
    raise AssertionError(f"no plain phrase in the caption {caption!r}")


def test_snakemake_builds_its_own_report_with_the_figures(smoke_run: Path) -> None:
    """`snakemake --report` carries every figure of the HTML report, each with its caption."""
    run(["snakemake", "--report", "snakemake-report.zip"], smoke_run)
    html = (smoke_run / "results" / "smoke" / "report" / "index.html").read_text("utf-8")
    figures = re.findall(r'<figure id="([^"]+)">', html)
    assert "claims" in figures and set(figures) == set(REPORT_FIGURES)
    with zipfile.ZipFile(smoke_run / "snakemake-report.zip") as archive:
        names = archive.namelist()
        included = {Path(n).stem for n in names if n.endswith(".png")}
        page = next(archive.read(n).decode("utf-8") for n in names if n.endswith("report.html"))
    assert set(figures) <= included, set(figures) - included
    for name in figures:
        assert caption_phrase(REPORT_FIGURES[name]) in page, name


def file_digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".parquet", ".safetensors", ".json", ".png")
    }


def changed_dvc_stages(project: Path) -> set[str]:
    """The stages `dvc status` reports changed (foreach stages by their group name)."""
    status = json.loads(run(["dvc", "status", "--json"], project).stdout)
    return {name.split("@")[0] for name in status}


def rerun_rules(project: Path, *args: str) -> set[str]:
    """The rules of the jobs a dry run schedules because their params changed; every other job
    it schedules must run only because an upstream job writes new input."""
    jobs = [job for job in snakemake_jobs(project, *args) if job["rule"] != "all"]
    changed = {str(job["rule"]) for job in jobs if "Params have changed" in str(job["reason"])}
    others = [job for job in jobs if str(job["rule"]) not in changed]
    assert all("updated by another job" in str(job["reason"]) for job in others), others
    return changed


def test_dvc_and_snakemake_keep_each_other_current(smoke_copy: Path) -> None:
    """`dvc commit` and `dvc checkout` rewrite files (new modification times); Snakemake decides
    by checksum and reruns nothing. Then a change of one config key reruns exactly the stages
    that read it, in both front-ends."""
    run(["dvc", "commit", "--force"], smoke_copy)  # record what Snakemake built in dvc.lock
    assert "Nothing to be done" in run(["snakemake", "-n"], smoke_copy).stdout
    selection = smoke_copy / "results" / "smoke" / "selection.json"
    selection.unlink()
    run(["dvc", "checkout"], smoke_copy)
    assert selection.is_file()
    assert "Nothing to be done" in run(["snakemake", "-n"], smoke_copy).stdout
    assert "up to date" in run(["dvc", "status"], smoke_copy).stdout

    params = smoke_copy / "params.yaml"
    original = params.read_text()
    try:
        for old, new, stages in [
            # the ngrams stage (smoke: three orders) draws the overlap nulls of its nesting too
            ("overlap_draws: 10000", "overlap_draws: 500", {"overlap", "ngrams", "report"}),
            ("selection_tolerance: 0.04", "selection_tolerance: 0.5", {"select", "report"}),
            ("residual_sequences: 512", "residual_sequences: 64", {"residual", "report"}),
            ("budgets: [500, 2000]", "budgets: [600, 2000]", {"checkpoints", "report"}),
        ]:
            assert old in original, old
            params.write_text(original.replace(old, new))
            # Snakemake checks params only of jobs whose inputs stay (the report's come new from
            # the rerun stage); its dry run also writes the new effective config, which DVC reads.
            assert rerun_rules(smoke_copy) == stages - {"report"}, new
            assert changed_dvc_stages(smoke_copy) == {"config", *stages}, new
    finally:
        params.write_text(original)
    # Snakemake's own override syntax changes exactly the same jobs as editing the file.
    override = ["--config", 'analysis={"overlap_draws": 500}']
    assert rerun_rules(smoke_copy, *override) == {"overlap", "ngrams"}
    assert "Nothing to be done" in run(["snakemake", "-n"], smoke_copy).stdout
    assert "up to date" in run(["dvc", "status"], smoke_copy).stdout

    # A DVC experiment on one parameter reruns exactly the stages that read it.
    for setting in (["user.name", "test"], ["user.email", "test@example.org"]):
        run(["git", "config", *setting], smoke_copy)
    run(["git", "add", *PROJECT_FILES, "dvc.yaml", "dvc.lock", "params.yaml", ".dvc"], smoke_copy)
    run(["git", "commit", "-qm", "smoke run"], smoke_copy)
    result = run(
        ["dvc", "exp", "run", "-S", "analysis.overlap_draws=500", "-n", "draws"], smoke_copy
    )
    ran = set(re.findall(r"Running stage '([\w@.+-]+)'", result.stdout + result.stderr))
    assert ran == {"config", "overlap", "ngrams", "report"}, result.stdout
    assert "draws" in run(["dvc", "exp", "show", "--csv"], smoke_copy).stdout
    run(["git", "checkout", "params.yaml", "dvc.lock"], smoke_copy)  # back to the main run
    run(["dvc", "checkout", "--force"], smoke_copy)
    assert "Nothing to be done" in run(["snakemake", "-n"], smoke_copy).stdout


def test_a_fresh_clone_pulls_the_run_from_a_dvc_remote(smoke_copy: Path, tmp_path: Path) -> None:
    """Share a finished run through a DVC remote: push, clone, pull, and nothing is rebuilt."""
    remote, clone = tmp_path / "remote", tmp_path / "clone"
    run(["dvc", "commit", "--force"], smoke_copy)  # record what Snakemake built in dvc.lock
    run(["dvc", "remote", "add", "--default", "shared", str(remote)], smoke_copy)
    run(["dvc", "push"], smoke_copy)
    run(["git", "add", *PROJECT_FILES, "dvc.yaml", "dvc.lock", "params.yaml", ".dvc"], smoke_copy)
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.org"]
    run(["git", *identity, "commit", "-qm", "smoke run", "--allow-empty"], smoke_copy)

    run(["git", "clone", "-q", str(smoke_copy), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    for folder in ("data", "results/smoke/metrics", "results/smoke/masks", "results/smoke/report"):
        pulled = file_digests(clone / folder)
        assert pulled and pulled == file_digests(smoke_copy / folder), folder
    assert "up to date" in run(["dvc", "status"], clone).stdout

    # A fresh clone has no Snakemake records (checksums) of the run: `snakemake --touch` (what
    # `make pull` runs after `dvc pull`) records the pulled files as current.
    run(["snakemake", "--touch"], clone)
    assert "Nothing to be done" in run(["snakemake", "-n"], clone).stdout


def test_dvc_repro_rebuilds_the_smoke_run_byte_for_byte(
    smoke_run: Path, dvc_repro_run: tuple[Path, Any]
) -> None:
    """A second run of the whole smoke pipeline, by the other front-end (run beside the first):
    every table and mask (JSON carries timings) is byte-identical, and DVC then has nothing to
    do."""
    by_dvc, process = dvc_repro_run
    assert process.wait(timeout=900) == 0, (by_dvc.parent / "dvc-repro.log").read_text()[-5000:]
    first = file_digests(smoke_run / "data") | file_digests(smoke_run / "results")
    second = file_digests(by_dvc / "data") | file_digests(by_dvc / "results")
    binary = [name for name in second if name.endswith((".parquet", ".safetensors"))]
    assert len(binary) > 20
    assert {n: second[n] for n in binary} == {n: first.get(n) for n in binary}
    assert "up to date" in run(["dvc", "status"], by_dvc).stdout


def test_configs_that_differ_only_in_the_corpus_never_share_or_overwrite_data(
    smoke_copy: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "texts"
    corpus.mkdir()
    for i in range(8):
        (corpus / f"{i}.txt").write_text(f"Text number {i}. " * 400, encoding="utf-8")
    raw = yaml.safe_load((smoke_copy / "params.yaml").read_text())
    raw["corpus"] = {"name": raw["corpus"]["name"], "source": "local", "path": str(corpus)}
    other = smoke_copy / "other.yaml"
    other.write_text(yaml.safe_dump(raw))
    before = file_digests(smoke_copy / "data")
    run(["snakemake", "data", "--configfile", "other.yaml"], smoke_copy)
    after = file_digests(smoke_copy / "data")
    assert {name: after[name] for name in before} == before  # nothing of the first changed
    assert len(after) > len(before)  # the second has its own corpus, tokenizer and tokens
    assert "Nothing to be done" in run(["snakemake", "-n"], smoke_copy).stdout
