"""One GPU per job, tested without GPUs: slot locks between real processes, thread shares."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bigram_subnetworks.devices import claim_gpu, torch_threads, visible_gpus

HOLD = """
import sys, time
from pathlib import Path
from bigram_subnetworks.devices import claim_gpu
slot = claim_gpu(int(sys.argv[1]), wait_seconds=0.05, folder=Path(sys.argv[2]))
start = time.time()
time.sleep(float(sys.argv[3]))
print(slot, start, time.time())
"""


def test_concurrent_jobs_take_different_gpus_and_never_more_than_there_are(tmp_path: Path) -> None:
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", HOLD, "2", str(tmp_path), "1.0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(5)
    ]
    spans = []
    for job in jobs:
        out, _ = job.communicate(timeout=60)
        slot, start, end = out.split()
        spans.append((int(slot), float(start), float(end)))
    assert {slot for slot, _, _ in spans} == {0, 1}
    for slot, start, end in spans:  # a slot never has two holders at once
        others = [s for s in spans if s[0] == slot and s != (slot, start, end)]
        assert all(e <= start or s >= end for _, s, e in others)
    # At any moment at most two jobs compute, so five one-second jobs take at least three rounds.
    assert max(e for *_, e in spans) - min(s for _, s, _ in spans) >= 2.9


def test_a_process_keeps_its_gpu(tmp_path: Path) -> None:
    first = claim_gpu(3, folder=tmp_path)
    assert claim_gpu(3, folder=tmp_path) == first
    with pytest.raises(ValueError, match="no GPU"):
        claim_gpu(0, folder=tmp_path)


def test_threads_are_shared_per_gpu() -> None:
    assert torch_threads(16, 0) == 16
    assert torch_threads(16, 4) == 4
    assert torch_threads(2, 4) == 1


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,3")
    assert visible_gpus() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no nvidia-smi there
    assert visible_gpus() == 0
    start = time.perf_counter()
    assert visible_gpus() == 0 and time.perf_counter() - start < 1
