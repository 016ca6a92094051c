"""benchmarks/gpu_mask.py on its tiny CPU shape: every measurement is there, times are positive and
finite, and the loss check between our bigram step (b) and the dense reference (d) holds (and
fails the run, with exit code 1, when the two disagree)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_mask.py"
FAST = ["--shapes", "tiny", "--device", "cpu", "--batch", "8", "--seq-len", "32"]
FAST += ["--threads", "1", "--draws-per-context", "50"]
MODES = ("plain", "bigram", "full", "reference")


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("gpu_mask_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)  # --threads 1 must not leak into other tests
    sys.modules.pop(spec.name, None)


def run(bench: ModuleType, tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    output = tmp_path / "result.json"
    code = bench.main([*FAST, *extra, "--json", str(output)])
    return code, json.loads(output.read_text(encoding="utf-8"))


def positive(value: Any) -> bool:
    return isinstance(value, float | int) and math.isfinite(value) and value > 0


def test_the_tiny_cpu_run_reports_every_measurement(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result = run(bench, tmp_path, "--steps", "2", "--warmup", "1")
    out = capsys.readouterr().out
    assert code == 0
    assert "skipping bf16" in out  # the trainer's bf16 autocast is CUDA-only
    assert result["setup"]["skipped"][0]["dtype"] == "bf16"
    (row,) = result["rows"]
    assert (row["shape"], row["dtype"], row["tokens"]) == ("tiny", "fp32", 8 * 32)
    assert row["params"] > row["masked_params"] > 0
    for name in MODES:
        mode = row["modes"][name]
        assert mode["status"] == "ok", name
        assert positive(mode["ms"]) and len(mode["ms_all"]) == 2, name
        assert all(positive(t) for t in mode["ms_all"]), name
        assert math.isfinite(mode["loss"]), name
        assert positive(mode["tflops"]) and positive(mode["mfu"]), name
        assert mode["peak_bytes"] is None  # no device peak on a CPU
    for name in ("bigram", "full"):
        assert positive(row["modes"][name]["estimate_bytes"])
    assert all(positive(value) for value in row["ratios"].values())
    assert positive(row["dense_target_build_ms"]) and positive(row["dense_target_copy_ms"])
    for target in ("bigram", "full"):
        projection = row["projection"][target]
        assert projection["steps"] == 15000 and projection["saves"] == 74
        assert projection["hours"] >= projection["steps_hours"] > 0
    shape = result["shapes"]["tiny"]
    assert shape["status"] == "ok"
    assert positive(shape["save_s"]) and positive(shape["bigram_target_build_s"])
    table = result["setup"]["bigram_tables"]["1000"]
    assert table["nonzeros"] > 0 and table["unseen_contexts"] > 0
    assert {t["where"] for t in result["targets"]} == {
        "tiny fp32 (b) bigram",
        "tiny fp32 (c) full",
    }

    check = row["loss_check"]  # (b) and (d) on the same batch and soft masks
    assert check["ok"] is True
    assert check["abs_diff"] <= check["tolerance"] <= 1e-4 * max(1.0, check["reference"])
    assert check["ours"] == pytest.approx(check["reference"], rel=1e-4)
    # The timed steps start from the same mask logits and batches: (b) and (d) record the
    # same loss, while (c) trains against another target.
    bigram, reference = row["modes"]["bigram"]["loss"], row["modes"]["reference"]["loss"]
    assert bigram == pytest.approx(reference, rel=1e-4)


def test_a_loss_mismatch_fails_the_run(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = bench.Reference.__call__

    def off_by_a_bit(self: Any, micro: torch.Tensor, soft: Any) -> torch.Tensor:
        return real(self, micro, soft) + 1e-2

    monkeypatch.setattr(bench.Reference, "__call__", off_by_a_bit)
    code, result = run(bench, tmp_path, "--steps", "1", "--warmup", "0", "--save-every", "0")
    assert code == 1
    check = result["rows"][0]["loss_check"]
    assert check["ok"] is False and check["abs_diff"] == pytest.approx(1e-2, rel=1e-3)
    assert result["rows"][0]["projection"]["bigram"]["saves"] == 0


def test_an_oom_is_reported_and_the_1b_targets_are_judged(
    bench: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The GPU-only paths, on a CPU: a mode that runs out of memory is reported and the others
    go on; the 1B targets are judged from whatever was measured ('1b' is tiny-sized here)."""
    monkeypatch.setitem(bench.SHAPES, "1b", bench.Shape("1b", 2, 64, 4, 1024, 1000))

    def out_of_memory(*args: Any) -> dict[str, Any]:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")

    monkeypatch.setattr(bench, "plain_mode", out_of_memory)
    code, result = run(bench, tmp_path, "--shapes", "1b", "--steps", "1", "--warmup", "0")
    out = capsys.readouterr()
    assert code == 0
    assert "CUDA out of memory" in out.err
    (row,) = result["rows"]
    assert row["modes"]["plain"]["status"].startswith("oom: CUDA out of memory")
    assert row["modes"]["bigram"]["status"] == "ok"
    assert row["ratios"]["bigram_over_plain"] is None
    assert positive(row["ratios"]["reference_over_bigram"])
    judged = {t["target"].split(" ")[0]: t for t in result["targets"]}
    minutes = judged["15,000-step"]["value"]
    assert positive(minutes) and judged["15,000-step"]["met"] is (minutes < 20)
    assert "not an H100" in judged["15,000-step"]["note"]
    assert judged["(d)/(b)"]["met"] in (True, False)
    assert "(d)/(b) >= 5 at 1B [1b fp32]" in out.out
