"""One GPU per job: how many GPUs a machine shows, and which one a job takes.

Snakemake runs torch jobs side by side on a machine with several GPUs (`--resources gpu=N`); each
job claims a GPU slot, an exclusive lock on `<lock dir>/gpu-<i>.lock`, held until the process
ends (the kernel drops it even on SIGKILL), and uses `cuda:<i>`. A job that finds every slot taken
waits for one, so never more jobs than GPUs compute at once, whatever the scheduler does. On SLURM
each job sees only its own GPU (CUDA_VISIBLE_DEVICES), which is slot 0.

Torch-free: the front-ends count GPUs at parse time without importing torch.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

_held: dict[int, IO[bytes]] = {}  # slot -> its open lock file (held as long as it stays open)


def visible_gpus() -> int:
    """How many GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.splitlines())


def lock_dir() -> Path:
    """Where the GPU slot locks of this machine and user live."""
    folder = (
        os.environ.get("BSN_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / f"bsn-gpu-{os.getuid()}"
    )
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder)


def claim_gpu(count: int, wait_seconds: float = 0.5, folder: Path | None = None) -> int:
    """Claim a free GPU slot among `count` for the rest of this process (the same one when called
    again); wait while all are taken."""
    if count < 1:
        raise ValueError("no GPU to claim")
    if _held:
        return next(iter(_held))
    folder = folder or lock_dir()
    waited = False
    while True:
        for index in range(count):
            handle = open(folder / f"gpu-{index}.lock", "ab")  # noqa: SIM115 (held open on purpose)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _held[index] = handle
            if waited:
                log.info("GPU %d became free", index)
            return index
        if not waited:
            log.info("all %d GPUs are in use by other jobs; waiting for one", count)
            waited = True
        time.sleep(wait_seconds)


def limit_numeric_threads(threads: int) -> None:
    """Hold numpy's BLAS (and any OpenMP pool) to `threads` for the rest of the process: a
    thread count changes results in their last bits, and a job must not depend on whether
    Snakemake (which sets OMP_NUM_THREADS) or DVC (which does not) started it."""
    from threadpoolctl import threadpool_limits

    _limits.append(threadpool_limits(limits=threads))


_limits: list[object] = []


def torch_threads(cores: int, gpus: int) -> int:
    """CPU threads of a torch job: all cores on a CPU machine, an equal share per GPU otherwise
    (so the scheduler can run one job per GPU)."""
    return max(1, cores // gpus) if gpus > 0 else max(1, cores)
