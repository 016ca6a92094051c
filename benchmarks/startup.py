"""Start-up of the torch stages: time from process start to a job's first unit of work, by phase.

For each torch stage (and `fetch`) one job of the smoke config runs as Snakemake would run it
(`bsn <stage> --config ... <paths>`), in a child process started by this script; children of the
same script measure two floors, so all are timed the same way in the same run:

  floor 1   import torch
  floor 2   import torch + the model class's own import (the family's class, e.g.
            `from transformers import GPTNeoXForCausalLM` for the smoke model)
  stage     the bsn job, from process start to its first unit of work

First unit of work: the first forward pass of any torch module (a global forward pre-hook, torch's
own API, installed just before the CLI calls the stage function). A job that runs none (a λ = ±inf
mask, `fetch`) counts to its end. The child splits its time into exclusive phases (a phase nested
in another, such as an import inside a model load, counts to the inner one only):

  imports   every module import (torch and the model class too: floor 2 is mostly imports)
  config    reading and validating the config (`load_config`), less its imports
  model     reading or writing model weights (transformers' `from_pretrained`, and
            `save_pretrained`: pretrain saves its step-0 checkpoint first), less imports: work
  other     the rest: interpreter start, argument parsing, reading the job's (tiny) inputs and
            masks, pretrain's bigram baseline and model build, setting up the first step

Project overhead = stage - model - floor 2: everything a job spends before its first step beyond
importing torch and the model class, except reading the model's weights (work a job exists to
do). It prints in wall seconds and in CPU seconds of the process (all its threads): on a
shared machine the wall clock moves with the load by more than the target, CPU time hardly, so
the verdict goes by CPU time. Each measurement repeats `--repeats` times, floor 2 run next to
each stage run (the load drifts), and the medians print. Target: a stage's overhead <= 0.5 s.

    python benchmarks/startup.py                 # builds a throwaway smoke project first (~2 min)
    python benchmarks/startup.py --repeats 5 --project /tmp/bsn-startup --keep
    python benchmarks/startup.py --imports       # also what each job imports beyond floor 2
"""

from __future__ import annotations

import os
import sys
import time

EVENT = "BSN-STARTUP"
PHASES = ("imports", "config", "model")


def _report(event: str, phases: dict[str, float] | None = None) -> None:
    """Print the event, the clock, the process's CPU time so far and the phases' times."""
    spent = " ".join(f"{name}={seconds:.6f}" for name, seconds in (phases or {}).items())
    cpu = f"cpu={time.process_time():.6f}"
    sys.stdout.write(f"\n{EVENT} {event} {time.time():.6f} {cpu} {spent}\n")
    sys.stdout.flush()


class PhaseClock:
    """Exclusive wall and CPU time per phase (`<phase>` and `<phase>_cpu`): the innermost open
    phase gets the time."""

    def __init__(self) -> None:
        self.spent = {f"{p}{kind}": 0.0 for p in PHASES for kind in ("", "_cpu")}
        self._open: list[tuple[str, float, float]] = []

    def _charge(self, phase: str, wall: float, cpu: float) -> tuple[float, float]:
        now_wall, now_cpu = time.perf_counter(), time.process_time()
        self.spent[phase] += now_wall - wall
        self.spent[f"{phase}_cpu"] += now_cpu - cpu
        return now_wall, now_cpu

    def enter(self, phase: str) -> None:
        now = time.perf_counter(), time.process_time()
        if self._open:
            outer = self._open[-1]
            now = self._charge(outer[0], outer[1], outer[2])
        self._open.append((phase, *now))

    def leave(self) -> None:
        phase, wall, cpu = self._open.pop()
        now = self._charge(phase, wall, cpu)
        if self._open:
            self._open[-1] = (self._open[-1][0], *now)

    def timed(self, phase: str, function):
        def run(*args, **kwargs):
            self.enter(phase)
            try:
                return function(*args, **kwargs)
            finally:
                self.leave()

        return run


def _probe_stage(argv: list[str]) -> None:
    """Child: run `bsn argv`, reporting the first forward pass (then exit) or the job's end,
    with the time spent in each phase."""
    import builtins
    import importlib

    clock = PhaseClock()
    real_import = builtins.__import__

    def timed_import(name, *args, **kwargs):
        # Only imports that load something count (and the lookup of a loaded module is cheap).
        if name in sys.modules and not (len(args) > 2 and args[2]):
            return real_import(name, *args, **kwargs)
        clock.enter("imports")
        try:
            return real_import(name, *args, **kwargs)
        finally:
            clock.leave()
            _watch_model_loading(clock)

    builtins.__import__ = timed_import
    importlib.import_module = clock.timed("imports", importlib.import_module)
    from bigram_subnetworks import cli

    cli.load_config = clock.timed("config", cli.load_config)
    run_stage = cli.run_stage

    def probed(stage, args, cfg):
        import torch

        def first_work(module, inputs):
            _report("forward", clock.spent)
            os._exit(0)

        torch.nn.modules.module.register_module_forward_pre_hook(first_work)
        run_stage(stage, args, cfg)
        _report("end", clock.spent)

    cli.run_stage = probed
    code = cli.main(argv)
    os._exit(code)


def _watch_model_loading(clock: PhaseClock) -> None:
    """Once transformers' model base class is imported, time its weight I/O: `from_pretrained`
    and `save_pretrained` (pretrain saves its step-0 checkpoint before its first step)."""
    modeling = sys.modules.get("transformers.modeling_utils")
    base = getattr(modeling, "PreTrainedModel", None)
    if base is None or getattr(base.save_pretrained, "_bsn_timed", False):
        return
    base.from_pretrained = classmethod(clock.timed("model", base.from_pretrained.__func__))
    base.save_pretrained = clock.timed("model", base.save_pretrained)
    base.save_pretrained._bsn_timed = True


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
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402
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


@dataclass(frozen=True)
class Timing:
    """One probe child: its event, seconds from its start to the event, its phases, stderr."""

    event: str
    seconds: float
    phases: dict[str, float]
    stderr: str


def timed_child(args: list[str], cwd: Path, importtime: bool = False) -> Timing:
    """Run one probe child and time it from before its start to its event."""
    script = os.path.abspath(__file__)
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), script, *args]
    started = time.time()
    done = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True)
    found = re.findall(rf"^{EVENT} (\w+) ([\d.]+) ?(.*)$", done.stdout, re.M)
    if done.returncode != 0 or not found:
        raise ChildFailed(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "")
    event, when, spent = found[-1]
    phases = {k: float(v) for k, v in (item.split("=") for item in spent.split())}
    return Timing(event, float(when) - started, phases, done.stderr)


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


def median_time(args: list[str], cwd: Path, repeats: int) -> tuple[float, float]:
    """The median wall and CPU seconds of `repeats` runs of a probe child."""
    runs = [timed_child(args, cwd) for _ in range(repeats)]
    return (
        statistics.median(r.seconds for r in runs),
        statistics.median(r.phases["cpu"] for r in runs),
    )


@dataclass(frozen=True)
class StageTiming:
    """Medians over the repeats of one stage: time to first work, its phases, its overhead (wall
    and CPU seconds)."""

    event: str
    seconds: float
    phases: dict[str, float]
    overhead: float
    overhead_cpu: float


def time_stage(argv: list[str], floor_args: list[str], cwd: Path, repeats: int) -> StageTiming:
    """Run the stage and floor 2 in turns; the overhead is the median of the pairs'
    (stage - model - floor 2), so the drifting load of a shared machine hits both alike. The
    same in CPU seconds, which the load of a shared machine hardly moves."""
    runs, overheads, overheads_cpu = [], [], []
    for _ in range(repeats):
        floor = timed_child(floor_args, cwd)
        run = timed_child(["--probe-stage", *argv], cwd)
        runs.append(run)
        overheads.append(run.seconds - run.phases["model"] - floor.seconds)
        overheads_cpu.append(run.phases["cpu"] - run.phases["model_cpu"] - floor.phases["cpu"])
    phases = {name: statistics.median(r.phases[name] for r in runs) for name in runs[0].phases}
    seconds = statistics.median(r.seconds for r in runs)
    return StageTiming(
        runs[-1].event,
        seconds,
        phases,
        statistics.median(overheads),
        statistics.median(overheads_cpu),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, help="A smoke project (built there if missing).")
    parser.add_argument("--keep", action="store_true", help="Keep the project built here.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per measurement (median).")
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
        floor_args = ["--probe-floor", klass]
        torch_s, torch_cpu = median_time(["--probe-floor"], project, options.repeats)
        class_s, class_cpu = median_time(floor_args, project, options.repeats)
        floor = {}
        if options.imports:
            floor = import_times(timed_child(floor_args, project, importtime=True).stderr)
        print(f"\nstart-up, median of {options.repeats} (seconds from process start)")
        print(f"  {'':43s}  wall   cpu")
        print(f"  floor 1: import torch{'':22s}{torch_s:6.2f}{torch_cpu:6.2f}")
        print(f"  floor 2: import torch + {klass:19s}{class_s:6.2f}{class_cpu:6.2f}")
        columns = ("first", "at", *PHASES, "other", "overhead", "cpu", "cpu over")
        header = "".join(f"{h:>9s}" for h in columns)
        print(f"\n  {'stage':18s}{header}  target (cpu)")
        worst = 0.0
        for name, argv in jobs.items():
            try:
                timing = time_stage(argv, floor_args, project, options.repeats)
            except ChildFailed as error:
                print(f"  {name:18s}failed: {error}")
                continue
            worst = max(worst, timing.overhead_cpu)
            other = timing.seconds - sum(timing.phases[p] for p in PHASES)
            cells = "".join(f"{timing.phases[p]:9.2f}" for p in PHASES)
            verdict = "met" if timing.overhead_cpu <= TARGET_S else "NOT met"
            print(
                f"  {name:18s}{timing.seconds:9.2f}{timing.event:>9s}{cells}{other:9.2f}"
                f"{timing.overhead:+9.2f}{timing.phases['cpu']:9.2f}{timing.overhead_cpu:+9.2f}"
                f"  {verdict}"
            )
            if options.imports:
                stderr = timed_child(["--probe-stage", *argv], project, importtime=True).stderr
                print(f"  {'':18s}beyond floor 2 (s): {beyond_floor(import_times(stderr), floor)}")
        print(
            f"\nproject overhead (first work - model weights I/O - floor 2, CPU seconds): at most "
            f"{worst:+.2f} s (target <= {TARGET_S} s)"
        )
    finally:
        if scratch is not None and not options.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        elif scratch is not None:
            print(f"project kept: {project}")


if __name__ == "__main__":
    main()
