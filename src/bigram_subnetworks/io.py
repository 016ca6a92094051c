"""Atomic artifact I/O: Parquet tables, JSON metadata, checksums.

Every artifact is written to a temporary file in its own folder and renamed into place, so a killed
or failed stage never leaves a truncated file that a later stage would accept. Stages with several
outputs stage them all and rename only once every one of them is complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.abc
import importlib.machinery
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bigram_subnetworks.errors import UserError


class ArtifactError(UserError):
    """An input artifact is missing or malformed; the message names the file and the fix."""


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


# Errors that mean the file system refused a write (full disk, quota, read-only, file too large).
_WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _write_failure(error: OSError) -> bool:
    return error.errno in _WRITE_FAILURES or "No space left on device" in str(error)


@contextlib.contextmanager
def atomic_outputs(*paths: Path | str) -> Iterator[list[Path]]:
    """Yield temporary paths for `paths`; rename them all into place only if the block succeeds.
    A write the file system refuses (e.g. a full disk) becomes a one-line UserError naming the
    outputs; nothing is left behind either way."""
    finals = [Path(p) for p in paths]
    temps = [_temp_name(p) for p in finals]
    for path in finals:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield temps
        for temp in temps:
            if not temp.exists():
                raise RuntimeError(f"internal error: {temp} was not written")
            _fsync(temp)
        for temp, final in zip(temps, finals, strict=True):
            os.replace(temp, final)
    except OSError as error:
        if not _write_failure(error):
            raise
        reason = error.strerror or str(error).splitlines()[0]
        names = ", ".join(str(p) for p in finals)
        raise UserError(
            f"{names}: could not be written ({reason}); free disk space (or fix the quota or "
            "permissions) and rerun"
        ) from error
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


SEED_METADATA_KEY = b"bsn.seed"


def write_parquet(table: pa.Table, path: Path, seed: int | None = None, **kwargs: Any) -> None:
    """Write a zstd Parquet file; equal tables give byte-identical files. `seed`, for tables a
    seeded stage made, is recorded in the file's metadata (`bsn.seed`; see `parquet_seed`)."""
    if seed is not None:
        metadata = {**(table.schema.metadata or {}), SEED_METADATA_KEY: str(seed).encode()}
        table = table.replace_schema_metadata(metadata)
    pq.write_table(table, path, compression="zstd", **kwargs)


def parquet_seed(path: Path | str) -> int | None:
    """The seed recorded in a Parquet file written by `write_parquet`, if any."""
    metadata = pq.read_schema(path).metadata or {}
    value = metadata.get(SEED_METADATA_KEY)
    return None if value is None else int(value)


def write_json(obj: Any, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True)
        handle.write("\n")


def read_json(path: Path | str) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file not found; run the stage that makes it") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(f"{path}: not valid JSON; delete it and rerun its stage") from None


def read_parquet(path: Path | str, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet table, refusing missing files, damaged files and missing columns by name."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: file not found; run the stage that makes it")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError):
        raise ArtifactError(f"{path}: not a readable Parquet file; delete it and rerun") from None
    missing = [c for c in columns or [] if c not in schema.names]
    if missing:
        raise ArtifactError(
            f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(schema.names)}); "
            "rerun the stage that makes it"
        )
    # ParquetFile rather than pq.read_table: read_table imports pyarrow.dataset first (part of a
    # torch job's start-up); the same table, the same metadata.
    with pq.ParquetFile(path) as parquet:
        return parquet.read(columns=columns)


class _PandasHidden(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A finder that makes `import pandas` fail while it is on sys.meta_path. It still answers
    `importlib.util.find_spec` (with a spec that has no origin), so code that only asks whether
    pandas is installed keeps working."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name.partition(".")[0] != "pandas":
            return None
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        raise ModuleNotFoundError(f"No module named {spec.name!r} (hidden)", name=spec.name)

    def exec_module(self, module: Any) -> None:  # never reached: create_module raises
        raise ModuleNotFoundError(f"No module named {module.__name__!r} (hidden)")


@contextlib.contextmanager
def without_pandas() -> Iterator[None]:
    """Run the block as if pandas were not installed, unless it is already imported.

    pyarrow imports its optional pandas integration on its first conversion of any array (about
    0.5 s of a torch job's start-up) when pandas is installed, as it is for the report's plots.
    No bsn job hands pandas objects to pyarrow, so a job's tables are the same without it. After
    the block pandas imports again; pyarrow then loads its integration on the first call that
    needs it (`to_pandas`, `from_pandas`)."""
    if "pandas" in sys.modules:
        yield
        return
    finder = _PandasHidden()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header key-sorted.

    The library keeps metadata in a hash map, so two saves of equal tensors and metadata may order
    the header differently; sorting makes equal content give byte-identical files.
    """
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to a multiple of 8 bytes
    return len(text).to_bytes(8, "little") + text + data[8 + length :]


def sha256_file(path: Path | str, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
