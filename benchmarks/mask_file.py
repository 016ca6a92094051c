"""Mask file size and save/load time: bit-packed files (format 2) against one byte per entry (1).

On a mask with Pythia-1B's masked shapes (16 layers, d = 2048: per layer the fused QKV
(6144 × 2048), the attention output (2048 × 2048), MLP-in (8192 × 2048) and MLP-out
(2048 × 8192), GPT-NeoX names; 805,306,368 entries in 64 tensors), in the same run:

  v1  the format before version 2, written exactly as the old save_mask wrote it (one bool
      tensor per weight, atomically: temporary file, fsync, rename);
  v2  `save_mask` now: bit-packed uint8 tensors (numpy.packbits, little bit order) + shapes.

Both are read back with `load_mask` (which reads both versions and checks kept/total/params
against the unpacked tensors), twice: "warm" from the page cache (the file was just written) and
"cold" after evicting the file from the page cache (posix_fadvise DONTNEED; the files are
fsynced, so this needs no privileges), which reads it from the disk. Also timed: packing and
unpacking alone (the vectorised part). Saves include the fsync.
Reports only: exit 0 whatever the numbers, non-zero only when a file reads back wrong.

    .venv/bin/python benchmarks/mask_file.py [--layers 16] [--d-model 2048] [--repeat 3]
                                             [--kept 0.0017] [--dir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save

from bigram_subnetworks.io import atomic_outputs, canonical_safetensors
from bigram_subnetworks.masks.toolkit import (
    kept,
    load_mask,
    pack_bits,
    params_sha256,
    save_mask,
    total,
    unpack_bits,
)

# Metadata like a trained mask's (model identity, target, λ, training summary).
METADATA: dict[str, Any] = {
    "model": "pythia-1b",
    "source": "huggingface",
    "id": "EleutherAI/pythia-1b",
    "revision": "main",
    "commit": "f73d7dcc545c8bd326d8559c8ef84ffe92fea6b2",
    "model_type": "gpt_neox",
    "target": "bigram",
    "lambda": "1e1",
    "seed": 0,
    "steps": 15000,
    "attempts": 1,
    "stable": True,
    "stopped_early": False,
}


def pythia_mask(layers: int, d: int, p: float, seed: int) -> dict[str, torch.Tensor]:
    """GPT-NeoX-named masks of Pythia's block shapes; each entry kept with probability p."""
    shapes = {
        "attention.query_key_value.weight": (3 * d, d),
        "attention.dense.weight": (d, d),
        "mlp.dense_h_to_4h.weight": (4 * d, d),
        "mlp.dense_4h_to_h.weight": (d, 4 * d),
    }
    gen = torch.Generator().manual_seed(seed)
    return {
        f"gpt_neox.layers.{layer}.{name}": torch.rand(shape, generator=gen) < p
        for layer in range(layers)
        for name, shape in shapes.items()
    }


def save_version_1(path: Path, mask: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """save_mask as it was before format version 2 (git a882686)."""
    encoded = {k: json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    encoded |= {
        "kept": json.dumps(kept(mask)),
        "total": json.dumps(total(mask)),
        "params_sha256": json.dumps(params_sha256({k: v.shape for k, v in mask.items()})),
    }
    tensors = {name: t.detach().cpu().contiguous() for name, t in mask.items()}
    with atomic_outputs(path) as (temp,):
        temp.write_bytes(canonical_safetensors(save(tensors, metadata=encoded)))


def evict(path: Path) -> None:
    """Drop `path`'s pages from the page cache (Linux; a no-op elsewhere)."""
    if hasattr(os, "posix_fadvise"):
        with open(path, "rb") as handle:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def best_of(
    repeat: int, call: Callable[[], Any], before: Callable[[], None] | None = None
) -> tuple[float, Any]:
    """Best wall time of `repeat` calls (garbage collector off while timing; `before` runs
    untimed before each) and the last result."""
    times, result = [], None
    for _ in range(repeat):
        result = None
        if before is not None:
            before()
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            result = call()
            times.append(time.perf_counter() - start)
        finally:
            gc.enable()
    return min(times), result


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=2048)
    parser.add_argument("--kept", type=float, default=0.0017, help="Kept fraction (Table 3).")
    parser.add_argument("--repeat", type=int, default=3, help="Each timing: best of R.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, help="Write the files here (default: a temp dir).")
    parser.add_argument("--json", type=Path, help="Also write the results as JSON.")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    mask = pythia_mask(args.layers, args.d_model, args.kept, args.seed)
    built = time.perf_counter() - start
    entries, n_kept = total(mask), kept(mask)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        paths = {"v1": Path(folder) / "v1.safetensors", "v2": Path(folder) / "v2.safetensors"}
        save_v1, _ = best_of(args.repeat, lambda: save_version_1(paths["v1"], mask, METADATA))
        save_v2, _ = best_of(args.repeat, lambda: save_mask(paths["v2"], mask, METADATA))
        sizes = {v: p.stat().st_size for v, p in paths.items()}
        loads, colds, versions = {}, {}, {}
        for version, path in paths.items():
            loads[version], (loaded, meta) = best_of(args.repeat, lambda p=path: load_mask(p))
            versions[version] = meta["bsn_mask_format"]
            check(loaded.keys() == mask.keys(), f"{version}: other tensor names read back")
            check(all(torch.equal(loaded[n], mask[n]) for n in mask), f"{version}: wrong bits")
            check(meta["kept"] == n_kept and meta["total"] == entries, f"{version}: counts")
            del loaded
            colds[version], _ = best_of(
                args.repeat, lambda p=path: load_mask(p), lambda p=path: evict(p)
            )
        check(versions == {"v1": 1, "v2": 2}, f"format versions read back: {versions}")
    pack, packed = best_of(args.repeat, lambda: {n: pack_bits(t) for n, t in mask.items()})
    unpack, _ = best_of(
        args.repeat, lambda: {n: unpack_bits(packed[n], mask[n].shape) for n in mask}
    )
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    print(
        f"mask file benchmark: {args.layers} layers, d = {args.d_model} (Pythia-1B: 16, 2048), "
        f"{entries:,} entries in {len(mask)} tensors, kept {n_kept / entries:.4%}; best of "
        f"{args.repeat}; numpy {np.__version__}, torch {torch.__version__}, "
        f"{platform.machine()} {platform.system()}"
    )
    header = (
        f"{'format':<28} {'file size':>15} {'bytes/entry':>11} {'save':>8} {'load warm':>10} "
        f"{'load cold':>10}"
    )
    print(header)
    print("-" * len(header))
    names = {"v1": "1: bool, 1 byte per entry", "v2": "2: bit-packed, 1 bit"}
    saves = {"v1": save_v1, "v2": save_v2}
    for version in ("v1", "v2"):
        print(
            f"{names[version]:<28} {sizes[version]:>13,} B {sizes[version] / entries:>11.4f} "
            f"{saves[version]:>7.2f}s {loads[version]:>9.2f}s {colds[version]:>9.2f}s"
        )
    print(
        f"{'v1 / v2':<28} {sizes['v1'] / sizes['v2']:>14.2f}x {'':>11} "
        f"{save_v1 / save_v2:>7.2f}x {loads['v1'] / loads['v2']:>9.2f}x "
        f"{colds['v1'] / colds['v2']:>9.2f}x"
    )
    print(
        f"pack alone {pack:.3f} s, unpack alone {unpack:.3f} s "
        f"({entries / pack / 1e9:.1f}G / {entries / unpack / 1e9:.1f}G entries/s); "
        f"building the mask {built:.1f} s; peak RSS {peak_gib:.2f} GiB"
    )
    print("both files read back bit-exact with load_mask (checked in the run)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "layers": args.layers,
                    "d_model": args.d_model,
                    "entries": entries,
                    "kept": n_kept,
                    "repeat": args.repeat,
                    "bytes": sizes,
                    "save_s": saves,
                    "load_warm_s": loads,
                    "load_cold_s": colds,
                    "pack_s": pack,
                    "unpack_s": unpack,
                    "peak_rss_gib": peak_gib,
                    "numpy": np.__version__,
                    "torch": torch.__version__,
                    "python": sys.version.split()[0],
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
