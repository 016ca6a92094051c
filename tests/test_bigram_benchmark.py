"""benchmarks/bigram_stats_scale.py on a tiny corpus: every measurement is there, the streamed
counts equal the in-memory ones, and a wrong streamed count fails the run."""

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
from tokenizers import Tokenizer

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bigram_stats_scale.py"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("bigram_stats_scale_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def run(bench: ModuleType, tmp_path: Path, tokenizer: Path) -> tuple[int, dict[str, Any]]:
    output = tmp_path / "result.json"
    code = bench.main(
        [
            *("--tokens", "60000", "--sample-tokens", "20000", "--table-types", "0"),
            *("--tokenizer", str(tokenizer), "--json", str(output)),
        ]
    )
    return code, json.loads(output.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer_file(small_bpe: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    small_bpe.save(str(path))
    return path


@pytest.mark.slow
def test_the_tiny_run_reports_every_measurement(
    bench: ModuleType, tmp_path: Path, tokenizer_file: Path
) -> None:
    code, result = run(bench, tmp_path, tokenizer_file)
    assert code == 0
    in_memory, streamed_sample, streamed = result["rows"]
    assert in_memory["tokens"] == streamed_sample["tokens"] >= 20000
    assert in_memory["bigram_types"] == streamed_sample["bigram_types"]
    assert streamed["tokens"] == 60000 // 128 * 128
    for row in result["rows"]:
        for key in ("seconds", "cpu_seconds", "tokens_per_s", "peak_rss_bytes"):
            assert math.isfinite(row[key]) and row[key] > 0, key
    assert result["projected_1_28B_s"] > 0 and set(result["targets"]) == {
        "under_30_min",
        "under_30_min_unshared",
        "under_4_GiB",
    }


@pytest.mark.slow
def test_a_wrong_streamed_count_fails_the_run(
    bench: ModuleType, tmp_path: Path, tokenizer_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench, "same_counts", lambda a, b: False)
    with pytest.raises(AssertionError, match="streamed counts differ"):
        run(bench, tmp_path, tokenizer_file)
