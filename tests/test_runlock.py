"""One live run per working directory; the lock of a killed run is released (runlock), and the
registry and torch stages import nothing of the report or the front-ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bigram_subnetworks import runlock

HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from bigram_subnetworks.runlock import take\n"
    "take(Path(sys.argv[1]))\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n"
)


def write_locks(folder: Path, count: int = 2) -> None:
    """Snakemake's lock files, as a run writes them (the files it writes, one a line)."""
    (folder / "locks").mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (folder / "locks" / f"{n}.output.lock").write_text(f"{folder.parent}/out{n}.txt\n")


def snakemake_dir(tmp_path: Path) -> Path:
    """A `.snakemake` folder with the lock files of a run that is gone."""
    folder = tmp_path / ".snakemake"
    write_locks(folder)
    return folder


def hold_in_another_process(folder: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), "snakemake", "--cores", "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_locks_no_live_process_holds_are_released(tmp_path: Path) -> None:
    folder = snakemake_dir(tmp_path)
    released = runlock.take(folder)
    assert [p.name for p in released] == ["0.output.lock", "1.output.lock"]
    assert list((folder / "locks").iterdir()) == []
    assert (folder / runlock.HOLDER).read_text().startswith(f"pid {os.getpid()} since ")
    assert runlock.take(folder) == []  # this process holds it already


def test_a_live_holder_stops_a_second_run_until_it_is_killed(tmp_path: Path) -> None:
    folder = snakemake_dir(tmp_path)
    holder = hold_in_another_process(folder)
    try:
        with pytest.raises(runlock.LiveRun) as stopped:
            runlock.take(folder)
        message = str(stopped.value)
        assert "\n" not in message
        assert f"another run of this workflow is active here (pid {holder.pid} since " in message
        assert message.startswith(f"{tmp_path}: ")
        assert message.endswith("wait for it to finish, or stop it and run the same command again")
        write_locks(folder, 1)  # the live run's own (Snakemake writes them after the flock)
        with pytest.raises(runlock.LiveRun):
            runlock.take(folder)
        assert (folder / "locks" / "0.output.lock").is_file()  # a live run's locks stay
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert [p.name for p in runlock.take(folder)] == ["0.output.lock"]


def fake_workflow(folder: Path, **changes: object) -> SimpleNamespace:
    """What guard_run reads of Snakemake's workflow object, for a real local run."""
    values = {
        "executor_plugin": object(),
        "dryrun": False,
        "is_main_process": True,
        "execution_settings": SimpleNamespace(lock=True),
        "persistence": SimpleNamespace(path=str(folder)),
    }
    return SimpleNamespace(**(values | changes))


@pytest.mark.parametrize(
    "changes",
    [
        {"dryrun": True},
        {"executor_plugin": None},  # not executing: --report, --summary, --delete-all-output
        {"is_main_process": False},  # a cluster job's own Snakemake
        {"execution_settings": SimpleNamespace(lock=False)},  # --nolock
    ],
)
def test_only_a_real_run_takes_the_lock(tmp_path: Path, changes: dict[str, object]) -> None:
    folder = snakemake_dir(tmp_path)
    runlock.guard_run(fake_workflow(folder, **changes))
    assert len(list((folder / "locks").iterdir())) == 2 and not (folder / runlock.HOLDER).exists()


def test_a_real_run_beside_a_live_one_exits_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = snakemake_dir(tmp_path)
    holder = hold_in_another_process(folder)
    write_locks(folder)
    try:
        with pytest.raises(SystemExit) as stopped:
            runlock.guard_run(fake_workflow(folder))
        assert f"(pid {holder.pid} since " in str(stopped.value.code)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    runlock.guard_run(fake_workflow(folder))
    err = capsys.readouterr().err
    assert "released the stale lock of an interrupted run (2 lock file(s)" in err


def test_the_registry_and_torch_stages_import_nothing_of_the_report_or_front_ends() -> None:
    """The report stage's figure names come from artifacts (no circle through report/), and the
    modules of every torch stage import none of the report's or the front-ends' libraries."""
    code = (
        "import importlib, sys\n"
        "from bigram_subnetworks.cli import build_parser\n"
        "from bigram_subnetworks.config import load_config\n"
        "from bigram_subnetworks.stages import STAGES, arguments, job_fields\n"
        "build_parser()\n"
        "cfg = load_config('config/smoke.yaml')\n"
        "report = STAGES['report']\n"
        "arguments(report, cfg, job_fields(cfg, {}))\n"
        "for stage in STAGES.values():\n"
        "    if stage.torch or stage.name == 'fetch':\n"
        "        importlib.import_module(stage.run.split(':')[0])\n"
        "unneeded = ('bigram_subnetworks.report', 'matplotlib', 'seaborn', 'scipy', 'pandas',\n"
        "            'dvc', 'snakemake')\n"
        "print(sorted({m for m in sys.modules if m.startswith(unneeded)}))\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
