"""One live Snakemake run per working directory, and no stale lock after a hard interrupt.

Snakemake's lock files (`.snakemake/locks/<n>.input.lock`, `<n>.output.lock`) list the files a run
reads and writes, not which process wrote them. A run killed with SIGKILL (an OOM kill, a dead SSH
session's SIGHUP, a cluster's time limit) leaves them behind, and the same command then stops with
"Directory cannot be locked". So every run (not a dry run) of this workflow also holds an flock on
`.snakemake/bsn-run.lock` for as long as its process lives; the kernel drops an flock however its
process ends. Before Snakemake checks its locks, a starting run takes that flock:

- it gets it: no live run is here, so every lock file is left by a dead one; they are removed (one
  line says so) and the run goes on;
- a live run holds it: this run stops with one line naming that run (its pid and command).
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Any

HOLDER = "bsn-run.lock"
LOCKS = "locks"

# The flock of this process's run (kept open until the process ends).
_held: dict[Path, int] = {}


class LiveRun(Exception):
    """A live run holds the working directory."""


def _holder_text() -> str:
    command = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))
    return f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}: {command}\n"


def take(snakemake_dir: Path) -> list[Path]:
    """Take the run flock of a `.snakemake` folder for this process and remove the lock files no
    live run holds; returns those removed. Raises LiveRun (its message names the live run) when
    another process holds the flock. Taking it again in the same process does nothing."""
    snakemake_dir = Path(snakemake_dir).resolve()
    if snakemake_dir in _held:
        return []
    snakemake_dir.mkdir(parents=True, exist_ok=True)
    holder = snakemake_dir / HOLDER
    fd = os.open(holder, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "pid unknown"
        os.close(fd)
        raise LiveRun(
            f"{snakemake_dir.parent}: another run of this workflow is active here ({owner}); "
            "wait for it to finish, or stop it and run the same command again"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, _holder_text().encode(), 0)
    _held[snakemake_dir] = fd
    stale = sorted((snakemake_dir / LOCKS).glob("*.lock"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def guard_run(workflow: Any) -> None:
    """In Snakemake's main process of a real run (not a dry run, not --nolock): `take` the flock
    of the run's `.snakemake` folder, saying which stale locks it released; a live run stops this
    one in one line. Call it while Snakemake builds the DAG (it knows then whether this is a dry
    run; it checks its own locks right after)."""
    wf = workflow
    executing = getattr(wf, "executor_plugin", None) is not None and not wf.dryrun
    settings = getattr(wf, "execution_settings", None)
    if not executing or not wf.is_main_process or (settings and not settings.lock):
        return
    try:
        released = take(Path(wf.persistence.path))
    except LiveRun as error:
        sys.exit(str(error))
    if released:
        print(
            f"released the stale lock of an interrupted run ({len(released)} lock file(s) in "
            f"{Path(wf.persistence.path) / LOCKS}; no live process held them)",
            file=sys.stderr,
        )
