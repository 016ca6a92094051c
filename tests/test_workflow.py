"""Snakemake and DVC describe the same DAG and produce the same artifacts on the smoke config."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bigram_subnetworks.io import parquet_seed
from projects import make_project, run

pytestmark = pytest.mark.workflow


def snakemake_jobs(project: Path, target: str) -> dict[str, dict[str, object]]:
    """Shell command -> rule, outputs (incl. log) and inputs of every job, from a dry run."""
    text = run(["snakemake", target, "--forceall", "-n", "-p", "--cores", "1"], project).stdout
    jobs: dict[str, dict[str, object]] = {}
    current: dict[str, object] | None = None
    for line in text.splitlines():
        header = re.match(r"^(?:local)?rule (\w+):$", line)
        if header:
            current = {"rule": header.group(1), "outs": set(), "deps": set()}
            continue
        if current is None:
            continue
        field = re.match(r"^\s+(input|output|log): (.*)$", line)
        if field:
            key = "deps" if field.group(1) == "input" else "outs"
            current[key] |= set(field.group(2).split(", "))
        elif line.startswith("Shell command: ") and line != "Shell command: None":
            jobs[line.removeprefix("Shell command: ").strip()] = current
            current = None
    return jobs


DVC_STAGES = """
import json
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo
stages = {}
for stage in Repo(".").index.stages:
    stages[stage.cmd] = {
        "name": stage.name,
        "outs": sorted(str(o.def_path) for o in stage.outs),
        "deps": sorted(
            str(d.def_path) for d in stage.deps if not isinstance(d, ParamsDependency)
        ),
    }
print(json.dumps(stages))
"""


def dvc_stages(project: Path) -> dict[str, dict[str, object]]:
    """Command -> stage name, outputs and (file) dependencies of every DVC stage."""
    return json.loads(run([sys.executable, "-c", DVC_STAGES], project).stdout)


def within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def test_snakemake_and_dvc_describe_the_same_stages(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    snake = snakemake_jobs(project, "all")
    dvc = dvc_stages(project)
    assert set(snake) == set(dvc)  # the same commands, one job per stage
    rules = {job["rule"] for job in snake.values()}
    assert rules == {
        "corpus",
        "tokenizer",
        "tokenize",
        "bigram_stats",
        "pretrain",
        "train_mask",
        "evaluate",
        "select",
        "overlap",
        "ablate",
        "residual",
        "checkpoint_masks",
        "checkpoints",
        "controls",
        "report",
    }
    for cmd, stage in dvc.items():
        job = snake[cmd]
        # DVC names a stage after its rule (train_mask_<target>@<model>-<λ> for train_mask).
        base = str(stage["name"]).split("@")[0].removesuffix("_bigram").removesuffix("_full")
        assert base == job["rule"], cmd
        # The same inputs and outputs: DVC may name a folder (results/<run>/masks) where
        # Snakemake lists the files in it, but neither front-end has one the other lacks.
        for key in ("deps", "outs"):
            snake_paths, dvc_paths = job[key], stage[key]
            uncovered = [p for p in snake_paths if not any(within(p, d) for d in dvc_paths)]
            unused = [d for d in dvc_paths if not any(within(p, d) for p in snake_paths)]
            assert uncovered == [] and unused == [], (cmd, key)
    masks = [job for job in snake.values() if job["rule"] == "train_mask"]
    assert len(masks) == 5  # smoke: one model × (4 bigram + 1 full) λ labels
    checkpoints = [job for job in snake.values() if job["rule"] == "checkpoint_masks"]
    assert len(checkpoints) == 2  # smoke: one model × steps 0 and 60


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
    assert f"bsn corpus: error: {expected}" in dvc.stdout + dvc.stderr
    assert not (project / "data" / "sotu-smoke" / "documents.parquet").exists()

    bsn = run(["bsn", "validate", "--config", "params.yaml"], project, check=False)
    assert bsn.returncode == 1
    assert bsn.stderr.strip() == f"bsn validate: error: {expected}"


def test_snakemake_refuses_config_overrides_it_cannot_pass_on(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    result = run(["snakemake", "data", "-n", "--config", "seed=3"], project, check=False)
    assert result.returncode != 0
    assert "--config overrides are not passed to the stages" in result.stderr


def test_snakemake_uses_the_configfile_given(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", config="params.yaml")
    jobs = snakemake_jobs(project, "data")
    corpus = next(job for job in jobs.values() if job["rule"] == "corpus")
    assert "data/sotu/documents.parquet" in corpus["outs"]
    result = run(
        ["snakemake", "data", "--forceall", "-n", "-p", "--configfile", "config/smoke.yaml"],
        project,
    )
    assert "bsn corpus --config config/smoke.yaml --output-dir data/sotu-smoke" in result.stdout


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project that ran the whole smoke pipeline with Snakemake (the report included)."""
    project = make_project(tmp_path_factory.mktemp("smoke") / "p")
    run(["snakemake", "--cores", "2"], project)
    return project


def test_smoke_run_trains_its_models_and_every_mask(smoke_run: Path) -> None:
    project = smoke_run
    model_dir = project / "results" / "smoke" / "models" / "neox-2x16"
    checkpoints = sorted(p.name for p in model_dir.glob("step-*"))
    assert len(checkpoints) >= 6 and "step-0" in checkpoints
    for folder in [model_dir / "final", *(model_dir / c for c in checkpoints)]:
        assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    info = json.loads((model_dir / "model.json").read_text())
    assert info["final_eval_loss"] > 0 and info["bigram_baseline"]["cross_entropy"] > 0

    masks = sorted((project / "results" / "smoke" / "masks").rglob("*.safetensors"))
    assert [m.relative_to(project / "results" / "smoke" / "masks").as_posix() for m in masks] == [
        f"neox-2x16/bigram/lambda-{lam}.safetensors" for lam in ("0", "1e1", "inf", "neginf")
    ] + ["neox-2x16/full/lambda-1e1.safetensors"]
    for mask in masks:
        log = json.loads(mask.with_suffix(".json").read_text())
        assert log["model"] == "neox-2x16" and log["weights_sha256"]
        assert len(log["history"]) == log["attempts"]
    benchmarks = list((project / "results" / "smoke" / "benchmarks").rglob("*.tsv"))
    # pretrain, five masks, two checkpoint jobs, seven analysis stages and the report
    assert len(benchmarks) == 16


def test_smoke_run_writes_every_analysis_table(smoke_run: Path) -> None:
    metrics = smoke_run / "results" / "smoke" / "metrics"
    tables = ["masks", "blocks", "overlap", "ablations", "generations", "residual"]
    tables += ["checkpoints", "controls"]
    for name in tables:
        assert pq.read_metadata(metrics / f"{name}.parquet").num_rows > 0, name
        assert parquet_seed(metrics / f"{name}.parquet") == 0, name  # the config's seed
    selection = json.loads((smoke_run / "results" / "smoke" / "selection.json").read_text())
    chosen = selection["models"]["neox-2x16"]
    assert chosen["bigram"]["lambda"] in ("0", "1e1")
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
    assert (smoke_run / "results" / "smoke" / "controls" / "neox-2x16" / "random-body").is_dir()


def test_a_finished_run_schedules_nothing(smoke_run: Path) -> None:
    assert "Nothing to be done" in run(["snakemake", "-n"], smoke_run).stdout


def rendered_images(page: Path, profile: Path) -> tuple[int, int]:
    """(images loaded, images) of an HTML page rendered by headless Chromium."""
    browser = next(
        (
            shutil.which(n)
            for n in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(n)
        ),
        None,
    )
    if browser is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
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
    assert len(figures) == 8
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


def test_snakemake_builds_its_own_report_with_the_figures(smoke_run: Path) -> None:
    run(["snakemake", "--report", "snakemake-report.zip"], smoke_run)
    assert (smoke_run / "snakemake-report.zip").stat().st_size > 10_000


def file_digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".parquet", ".safetensors", ".json", ".png")
    }


def test_a_fresh_clone_pulls_the_run_from_a_dvc_remote(smoke_run: Path, tmp_path: Path) -> None:
    """Share a finished run through a DVC remote: push, clone, pull, and nothing is rebuilt."""
    remote, clone = tmp_path / "remote", tmp_path / "clone"
    run(["dvc", "commit", "--force"], smoke_run)  # record what Snakemake built in dvc.lock
    # Committing moves outputs into DVC's cache and back, which renews their modification times.
    run(["snakemake", "--touch", "--cores", "1"], smoke_run)
    assert "Nothing to be done" in run(["snakemake", "-n"], smoke_run).stdout
    run(["dvc", "remote", "add", "--default", "shared", str(remote)], smoke_run)
    run(["dvc", "push"], smoke_run)
    tracked = ["Snakefile", "workflow", "config", "dvc.yaml", "dvc.lock", "params.yaml", ".dvc"]
    run(["git", "add", *tracked, ".dvcignore", "environment.yml"], smoke_run)
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.org"]
    run(["git", *identity, "commit", "-qm", "smoke run"], smoke_run)

    run(["git", "clone", "-q", str(smoke_run), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    for folder in ("data", "results/smoke/metrics", "results/smoke/masks", "results/smoke/report"):
        pulled = file_digests(clone / folder)
        assert pulled and pulled == file_digests(smoke_run / folder), folder
    assert "up to date" in run(["dvc", "status"], clone).stdout

    # DVC checks files out in no particular order, so Snakemake would see inputs newer than their
    # outputs; `snakemake --touch` (what `make pull` runs after `dvc pull`) marks them current.
    run(["snakemake", "--touch", "--cores", "1"], clone)
    assert "Nothing to be done" in run(["snakemake", "-n"], clone).stdout


def test_dvc_repro_rebuilds_the_smoke_run_byte_for_byte(smoke_run: Path, tmp_path: Path) -> None:
    """A second run of the whole smoke pipeline, by the other front-end: every table and mask
    (JSON carries timings) is byte-identical, and DVC then has nothing to do."""
    by_dvc = make_project(tmp_path / "dvc")
    run(["dvc", "repro"], by_dvc, timeout=900)
    first = file_digests(smoke_run / "data") | file_digests(smoke_run / "results")
    second = file_digests(by_dvc / "data") | file_digests(by_dvc / "results")
    binary = [name for name in first if name.endswith((".parquet", ".safetensors"))]
    assert len(binary) > 20
    assert {n: first[n] for n in binary} == {n: second.get(n) for n in binary}
    assert "up to date" in run(["dvc", "status"], by_dvc).stdout
