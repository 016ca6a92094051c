"""Start-up of the torch stages: time from process start to a job's first unit of work.

For each torch stage (and `fetch`) one job of the smoke config runs as Snakemake would run it
(`bsn <stage> --config ... <paths>`), in a child process started by this script; the same child
also measures two floors, so all are timed the same way in the same run:

  floor 1   import torch
  floor 2   import torch + the model class's own import (the family's class, e.g.
            `from transformers import GPTNeoXForCausalLM` for the smoke model)
  stage     bsn's own start (CLI, config, the stage's modules) up to the job's first unit of work

The first unit of work is the first forward pass of any torch module (a global forward pre-hook,
torch's own API, installed just before the CLI calls the stage function); a job that runs none (a
λ = ±inf mask, `fetch`) counts to its end. Everything before that point is start-up, including
reading the (tiny) smoke inputs and loading its (tiny) model. The child reports the clock when it
gets there and exits; the parent timed its start, so each number is process start -> first work.
Floor 2 is measured again right after each stage and the lower of the two counts (the load of a
shared machine drifts within a run). Target: a stage's overhead above floor 2 <= 0.5 s.

    python benchmarks/startup.py                 # builds a throwaway smoke project first (~2 min)
    python benchmarks/startup.py --repeats 5 --project /tmp/bsn-startup --keep
    python benchmarks/startup.py --imports       # also what each job imports beyond floor 2
"""

from __future__ import annotations

import os
import sys
import time

EVENT = "BSN-STARTUP"


def _report(event: str) -> None:
    sys.stdout.write(f"\n{EVENT} {event} {time.time():.6f}\n")
    sys.stdout.flush()


def _probe_stage(argv: list[str]) -> None:
    """Child: run `bsn argv`, reporting the first forward pass (then exit) or the job's end."""
    from bigram_subnetworks import cli

    run_stage = cli.run_stage

    def probed(stage, args, cfg):
        import torch

        def first_work(module, inputs):
            _report("forward")
            os._exit(0)

        torch.nn.modules.module.register_module_forward_pre_hook(first_work)
        run_stage(stage, args, cfg)
        _report("end")

    cli.run_stage = probed
    code = cli.main(argv)
    os._exit(code)


def _probe_floor(model_class: str | None) -> None:
    """Child: import torch (and the model class), report, exit."""
    import torch  # noqa: F401

    if model_class:
        import transformers

        getattr(transformers, model_class)
    _report("imported")
    os._exit(0)


if __name__ == "__main__" and sys.argv[1:2] == ["--probe-stage"]:
    _probe_stage(sys.argv[2:])
if __name__ == "__main__" and sys.argv[1:2] == ["--probe-floor"]:
    _probe_floor(sys.argv[2] if len(sys.argv) > 2 else None)

# ------------------------------------------------------------------------------ the parent

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGET_S = 0.5
# What a training or scoring job must not import (the report's and the front-ends' libraries).
UNNEEDED = (
    "seaborn",
    "matplotlib",
    "scipy",
    "pandas",
    "dvc",
    "snakemake",
    "bigram_subnetworks.report",
)
PROJECT_FILES = ["Snakefile", "profiles", "workflow", "config", ".dvcignore", "environment.yml"]


class ChildFailed(Exception):
    """A probe child ended without reaching its event (its last line of stderr)."""


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def timed_child(args: list[str], cwd: Path, importtime: bool = False) -> tuple[str, float, str]:
    """(event, seconds from start to the event, stderr) of one probe child."""
    script = os.path.abspath(__file__)
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), script, *args]
    started = time.time()
    done = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True)
    found = re.findall(rf"^{EVENT} (\w+) ([\d.]+)$", done.stdout, re.M)
    if done.returncode != 0 or not found:
        raise ChildFailed(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "")
    event, when = found[-1]
    return event, float(when) - started, done.stderr


def build_project(where: Path) -> Path:
    """A copy of the workflow with the smoke config as params.yaml, run up to its analyses."""
    where.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = ROOT / name
        copy = shutil.copytree if source.is_dir() else shutil.copy2
        copy(source, where / name)
    shutil.copy2(ROOT / "config" / "smoke.yaml", where / "params.yaml")
    print(f"building the smoke project in {where} (snakemake analysis) ...", flush=True)
    run = subprocess.run(
        [BIN / "snakemake", "--cores", "all", "analysis"],
        cwd=where,
        env=_env(),
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        raise SystemExit(f"snakemake failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return where


def fetch_config(project: Path) -> Path:
    """The smoke config on a local model (the smoke model's final weights), for `fetch`."""
    raw = yaml.safe_load((project / "params.yaml").read_text("utf-8"))
    final = next((project / "results").glob("*/models/*/final"))
    raw |= {"run": "startup-fetch", "checkpoints": None}
    raw["tokenizer"] = {"name": "local", "source": "pretrained", "model": str(final)}
    raw["models"] = {"local": {"source": "local", "path": str(final)}}
    path = project / "startup-fetch.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def stage_jobs(project: Path) -> dict[str, list[str]]:
    """One job's bsn arguments per torch stage (and fetch), as the registry writes them."""
    from bigram_subnetworks.config import load_config
    from bigram_subnetworks.stages import STAGES, arguments, job_fields, run_config_path

    def argv(cfg_path: Path, name: str, pick: dict[str, str] | None = None) -> list[str]:
        cfg = load_config(cfg_path)
        stage = STAGES[name]
        jobs = stage.jobs(cfg)
        job = next((j for j in jobs if pick and pick.items() <= j.items()), jobs[0])
        config = run_config_path(cfg) if cfg_path.name == "params.yaml" else cfg_path.name
        return [stage.command, "--config", config, *arguments(stage, cfg, job_fields(cfg, job))]

    params = project / "params.yaml"
    jobs = {
        "pretrain": argv(params, "pretrain"),
        "train_mask λ=1e1": argv(params, "train_mask", {"model": "neox-2x16", "lam": "1e1"}),
        "train_mask λ=inf": argv(params, "train_mask", {"model": "neox-2x16", "lam": "inf"}),
    }
    for name in ("evaluate", "ablate", "residual", "checkpoints", "controls"):
        jobs[name] = argv(params, name)
    jobs["fetch (local)"] = argv(fetch_config(project), "fetch", {"model": "local"})
    return jobs


def model_class(project: Path) -> str:
    from bigram_subnetworks.models.families import FAMILIES

    config = next((project / "results").glob("*/models/*/final/config.json"))
    return FAMILIES[json.loads(config.read_text("utf-8"))["model_type"]].causal_lm


def import_times(stderr: str) -> dict[str, int]:
    """Self time (µs) of every module a child imported, from its `-X importtime` lines."""
    times = {}
    for line in stderr.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+\d+ \| *(\S+)$", line)
        if found:
            times[found.group(2)] = int(found.group(1))
    return times


def beyond_floor(stage: dict[str, int], floor: dict[str, int], top: int = 6) -> str:
    """The packages a job imports beyond floor 2 (self times summed per package, µs under
    importtime, which inflates them), largest first; UNNEEDED ones marked with !"""
    by_package: dict[str, int] = {}
    for name, micros in stage.items():
        if name in floor:
            continue
        parts = name.split(".")
        package = ".".join(parts[:2]) if parts[0] == "bigram_subnetworks" else parts[0]
        by_package[package] = by_package.get(package, 0) + micros
    ranked = sorted(by_package.items(), key=lambda item: -item[1])
    unneeded = {p for p in by_package for u in UNNEEDED if p == u or p.startswith(u + ".")}
    shown = [f"{'!' if p in unneeded else ''}{p} {us / 1e6:.2f}" for p, us in ranked[:top]]
    return ", ".join(shown) + (f"; unneeded: {', '.join(sorted(unneeded))}" if unneeded else "")


def best_time(args: list[str], cwd: Path, repeats: int) -> tuple[str, float]:
    """(event, the shortest time of `repeats` runs): the cost with the least interference."""
    runs = [timed_child(args, cwd) for _ in range(repeats)]
    return runs[-1][0], min(t for _, t, _ in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, help="A smoke project (built there if missing).")
    parser.add_argument("--keep", action="store_true", help="Keep the project built here.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per measurement (best).")
    parser.add_argument("--imports", action="store_true", help="Also: imports beyond floor 2.")
    options = parser.parse_args()

    scratch = None
    project = options.project
    if project is None:
        scratch = Path(tempfile.mkdtemp(prefix="bsn-startup-"))
        project = scratch / "p"
    if not (project / "results").is_dir():
        build_project(project)
    try:
        klass = model_class(project)
        jobs = stage_jobs(project)
        _, torch_s = best_time(["--probe-floor"], project, options.repeats)
        _, class_s = best_time(["--probe-floor", klass], project, options.repeats)
        floor = {}
        if options.imports:
            _, _, stderr = timed_child(["--probe-floor", klass], project, importtime=True)
            floor = import_times(stderr)
        print(f"\nstart-up, best of {options.repeats} (seconds from process start)")
        print(f"  floor 1: import torch{'':27s}{torch_s:6.2f}")
        print(f"  floor 2: import torch + {klass:24s}{class_s:6.2f}")
        header = f"{'first work':>11s}{'at':>9s}{'-floor 1':>10s}{'-floor 2':>10s}"
        print(f"\n  {'stage':22s}{header}  target")
        worst = 0.0
        for name, argv in jobs.items():
            try:
                event, seconds = best_time(["--probe-stage", *argv], project, options.repeats)
            except ChildFailed as error:
                print(f"  {name:22s}failed: {error}")
                continue
            # Floor 2 again, right after the stage: a shared machine's load drifts within a run.
            _, floor_here = best_time(["--probe-floor", klass], project, options.repeats)
            over = seconds - min(floor_here, class_s)
            worst = max(worst, over)
            verdict = "met" if over <= TARGET_S else "NOT met"
            print(
                f"  {name:22s}{seconds:11.2f}{event:>9s}{seconds - torch_s:+10.2f}{over:+10.2f}"
                f"  {verdict}"
            )
            if options.imports:
                _, _, stderr = timed_child(["--probe-stage", *argv], project, importtime=True)
                print(f"  {'':22s}beyond floor 2 (s): {beyond_floor(import_times(stderr), floor)}")
        print(f"\nproject overhead above floor 2: at most {worst:+.2f} s (target <= {TARGET_S} s)")
    finally:
        if scratch is not None and not options.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        elif scratch is not None:
            print(f"project kept: {project}")


if __name__ == "__main__":
    main()
