"""Atomic writes: a write the file system refuses fails in one line and leaves nothing behind."""

from __future__ import annotations

import errno
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import bigram_subnetworks.io as io_module
from bigram_subnetworks.cli import main
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import (
    atomic_outputs,
    parquet_seed,
    read_json,
    read_parquet,
    write_json,
    write_parquet,
)
from bigram_subnetworks.masks.toolkit import load_mask, save_mask


def full_disk(_path: Path) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_fails_in_one_line_and_keeps_the_previous_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source, output = tmp_path / "mask.safetensors", tmp_path / "out" / "removed.safetensors"
    save_mask(source, {"w": torch.tensor([[True, False]])}, {})
    save_mask(output, {"w": torch.tensor([[True, True]])}, {})  # an earlier run's output
    before = output.read_bytes()

    monkeypatch.setattr(io_module, "_fsync", full_disk)  # where a full disk surfaces on Linux
    code = main(["mask", "complement", str(source), "--output", str(output)])
    errors = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(errors) == 1
    assert str(output) in errors[0] and "No space left on device" in errors[0]
    assert "free disk space" in errors[0]
    assert output.read_bytes() == before  # untouched, and no temporary file left behind
    assert sorted(p.name for p in output.parent.iterdir()) == ["removed.safetensors"]
    monkeypatch.undo()
    assert load_mask(output)[0]["w"].all()


def test_other_os_errors_are_not_disguised_as_a_full_disk(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), atomic_outputs(tmp_path / "a.json") as (temp,):
        write_json({}, temp)
        (tmp_path / "missing.json").read_text()
    assert list(tmp_path.iterdir()) == []


def test_a_refused_write_of_several_outputs_renames_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(io_module, "_fsync", full_disk)
    outputs = (tmp_path / "a.json", tmp_path / "b.json")
    refused = pytest.raises(UserError, match=r"a.json, .*b.json: could not be written")
    with refused, atomic_outputs(*outputs) as temps:
        for temp in temps:
            write_json({"x": 1}, temp)
    assert list(tmp_path.iterdir()) == []


def test_seeded_tables_record_their_seed_and_stay_byte_identical(tmp_path: Path) -> None:
    table = pa.table({"x": [1, 2, 3]})
    write_parquet(table, tmp_path / "a.parquet", seed=7)
    write_parquet(table, tmp_path / "b.parquet", seed=7)
    write_parquet(table, tmp_path / "plain.parquet")
    assert parquet_seed(tmp_path / "a.parquet") == 7
    assert parquet_seed(tmp_path / "plain.parquet") is None
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert pq.read_table(tmp_path / "a.parquet").equals(table)


def test_malformed_inputs_are_refused_in_one_line_naming_the_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens_train.parquet"
    write_parquet(pa.table({"seq_id": [0], "ids": [[1, 2]]}), tokens)
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(b"PAR1 not really parquet")
    broken = tmp_path / "model.json"
    broken.write_text('{"source": ')
    cases = [
        (lambda: read_parquet(tokens, columns=["seq_id", "input_ids"]), "input_ids"),
        (lambda: read_parquet(damaged), "damaged.parquet"),
        (lambda: read_json(broken), "model.json: not valid JSON"),
        (lambda: read_json(tmp_path / "absent.json"), "absent.json: file not found"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message) as error:
            call()
        assert "\n" not in str(error.value)
