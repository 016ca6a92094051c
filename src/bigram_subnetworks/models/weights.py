"""The weight files of a Hub revision: which they are, their sha256, and pickle-only revisions
converted to safetensors once.

A revision's weights are `model.safetensors` or the shards its `model.safetensors.index.json`
names; without either, `pytorch_model.bin` or the shards of `pytorch_model.bin.index.json`. In a
Hugging Face cache every large file is a blob named by its sha256, so a weight file's hash is read
off the blob's name (a file stored otherwise is hashed).

Pickled weights are read with torch's weights-only loader (no pickle code runs; a file holding
anything but tensors is refused) and written once as safetensors into a folder of their own beside
the cache, keyed by the revision's commit (the cache's snapshot stays as downloaded). That folder
is a complete model folder (the snapshot's configs copied beside the weights), written atomically,
with `conversion.json` recording the source files' hashes; every job loads it with safetensors.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import read_json, sha256_file, write_json

SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PICKLE = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# What fetch downloads for a revision without safetensors (never other pickles of the repo).
PICKLE_FILES = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
CONVERSION_FILE = "conversion.json"
CONFIG_SUFFIXES = (".json", ".txt", ".model")  # what a converted folder copies of the snapshot
_SHA256 = re.compile(r"[0-9a-f]{64}")


def weight_files(snapshot: Path, single: str, index: str) -> list[str] | None:
    """The weight files of one format in a snapshot (the index's shards, or the single file);
    None when the snapshot has neither."""
    index_path = snapshot / index
    if index_path.is_file():
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{index_path}: no weight_map; re-download the revision")
        names = sorted(set(weight_map.values()))
        missing = [name for name in names if not (snapshot / name).is_file()]
        if missing:
            raise UserError(
                f"{index_path}: names {missing[0]}, which the snapshot lacks; re-download the "
                "revision (rerun the fetch stage where there is network)"
            )
        return names
    return [single] if (snapshot / single).is_file() else None


def file_sha256(path: Path) -> str:
    """A snapshot file's sha256: its blob's name in a Hugging Face cache, else read."""
    target = path.resolve()
    if target.parent.name == "blobs" and _SHA256.fullmatch(target.name):
        return target.name
    return sha256_file(target)


def hashes(snapshot: Path, names: list[str]) -> dict[str, str]:
    return {name: file_sha256(snapshot / name) for name in names}


def _refusal(error: Exception) -> str:
    text = str(error)
    found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", text)
    if found:
        return f"it would call {found.group(1)}"
    if "Weights only load failed" in text:
        return "the weights-only loader refused it"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first[:160]


def load_tensors(path: Path, shown: str) -> dict[str, Any]:
    """The tensors of a pickled state dict, through torch's weights-only loader (never a full
    unpickle); anything but a flat dict of tensors is refused in one line naming `shown`."""
    import torch

    refuse = f"{shown}: refused, not a file of tensors only"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # the weights-only unpickler's refusals
        raise UserError(
            f"{refuse} ({_refusal(error)}); nothing in it was run; ask the publisher for "
            "safetensors weights"
        ) from None
    except Exception as error:  # a damaged or truncated file
        raise UserError(
            f"{shown}: cannot be read ({_refusal(error)}); delete it from the Hub cache and "
            "rerun the fetch stage where there is network"
        ) from None
    if not isinstance(state, dict):
        raise UserError(f"{refuse} (it holds a {type(state).__name__}); nothing in it was run")
    others = [
        f"{key!r}: {type(value).__name__}"
        for key, value in state.items()
        if not isinstance(key, str) or not isinstance(value, torch.Tensor)
    ]
    if others:
        raise UserError(f"{refuse} (it holds {others[0]}); nothing in it was run")
    return state


def safetensors_name(pickle_name: str) -> str:
    """pytorch_model-00001-of-00002.bin -> model-00001-of-00002.safetensors."""
    stem = pickle_name.removesuffix(".bin")
    stem = "model" + stem[len("pytorch_model") :] if stem.startswith("pytorch_model") else stem
    return stem + ".safetensors"


def _own_storage(state: dict[str, Any]) -> dict[str, Any]:
    """Contiguous tensors, each with a storage of its own (safetensors refuses shared storage,
    such as tied weights a pickle saved twice)."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in state.items():
        storage = tensor.untyped_storage()
        whole = storage.nbytes() == tensor.numel() * tensor.element_size()
        if not tensor.is_contiguous() or not whole or storage.data_ptr() in seen:
            tensor = tensor.contiguous().clone()
        if tensor.numel():
            seen.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    return tensors


def converted_folder(cache: Path, repo: str, commit: str) -> Path:
    """Where a revision's converted weights live: beside the Hub cache, by commit."""
    cache = cache if cache.name else cache.resolve()  # "." has no name to extend
    root = cache.parent / f"{cache.name}-safetensors"
    return root / f"models--{repo.replace('/', '--')}" / commit


def _complete(folder: Path, sources: dict[str, str]) -> dict[str, str] | None:
    """The output hashes of an earlier conversion of the same sources, if it is complete."""
    record = folder / CONVERSION_FILE
    if not record.is_file():
        return None
    done = read_json(record)
    outputs = done.get("outputs", {})
    if done.get("sources") != sources or not all((folder / n).is_file() for n in outputs):
        return None
    return outputs


def convert(
    snapshot: Path, names: list[str], sources: dict[str, str], folder: Path, shown: str
) -> dict[str, str]:
    """Convert a snapshot's pickled weight files to safetensors in `folder` (once: an earlier
    complete conversion of the same sources is reused); the output files' hashes."""
    from safetensors.torch import save_file

    done = _complete(folder, sources)
    if done is not None:
        return done
    staging = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        weight_map: dict[str, str] = {}
        total = 0
        for name in names:
            tensors = _own_storage(load_tensors(snapshot / name, f"{shown}: {name}"))
            output = safetensors_name(name)
            save_file(tensors, staging / output, metadata={"format": "pt"})
            weight_map |= dict.fromkeys(tensors, output)
            total += sum(t.numel() * t.element_size() for t in tensors.values())
            del tensors
        if len(names) > 1 or (snapshot / PICKLE[1]).is_file():
            index = {
                "metadata": {"total_size": total},
                "weight_map": dict(sorted(weight_map.items())),
            }
            write_json(index, staging / SAFETENSORS[1])
        for path in sorted(snapshot.iterdir()):  # configs and tokenizer files, never pickles
            if path.is_file() and path.suffix in CONFIG_SUFFIXES and path.name != PICKLE[1]:
                shutil.copyfile(path, staging / path.name)
        outputs = {n: sha256_file(staging / n) for n in sorted(set(weight_map.values()))}
        write_json({"sources": sources, "outputs": outputs}, staging / CONVERSION_FILE)
        _replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return outputs


def _replace(staging: Path, folder: Path) -> None:
    """Move a finished folder into place; an older one is moved aside first and then removed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        folder.rename(old)
    try:
        staging.rename(folder)
    except OSError:
        if not folder.is_dir():  # another job finished the same conversion first: keep it
            raise
    shutil.rmtree(old, ignore_errors=True)


def shared_files(files_by_step: dict[int, dict[str, str]]) -> list[tuple[list[int], str, str]]:
    """Weight files that two or more different steps share: (steps, file name, sha256), one per
    shared hash, sorted by steps."""
    owners: dict[str, set[int]] = {}
    names: dict[str, str] = {}
    for step, files in sorted(files_by_step.items()):
        for name, digest in files.items():
            owners.setdefault(digest, set()).add(step)
            names.setdefault(digest, name)
    shared = [(sorted(steps), names[d], d) for d, steps in owners.items() if len(steps) > 1]
    return sorted(shared)


def duplicate_sets(shared: list[tuple[list[int], str, str]]) -> list[set[int]]:
    """Steps joined by any shared file, transitively (one set per group of duplicates)."""
    sets: list[set[int]] = []
    for steps, _, _ in shared:
        joined = set(steps)
        for other in [s for s in sets if s & joined]:
            joined |= other
            sets.remove(other)
        sets.append(joined)
    return sorted(sets, key=min)
