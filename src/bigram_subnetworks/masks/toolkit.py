"""Binary masks as data: algebra, random baselines, head/unit/layer edits, counts, files, use.

A mask is a dict from the model's own parameter names (exactly `Layout.masked`) to bool tensors
shaped like those weights; True keeps an entry. Functions here never modify a mask in place: edits
return a new dict, whose untouched tensors may be shared with the input.

Mask files are safetensors; `save_mask` writes format version 2, `load_mask` reads versions 1
and 2 and returns bool tensors either way. Every metadata value (str → str in safetensors) is a
JSON encoding: a user's values, plus "kept", "total" and "params_sha256", a sha256 over the sorted
"name:shape" list (so a mask made for another model is recognised before it is applied), all
recomputed from the unpacked tensors on every save and checked on every load.

Version 2 (bit-packed, 1 bit per entry):
- one 1-D uint8 tensor per masked parameter, under the parameter's own name, holding the weight's
  entries in row-major (C) order packed 8 to a byte, little-endian bit order (numpy.packbits with
  bitorder="little"): entry i is bit (i mod 8), value 1 << (i mod 8), of byte i // 8; 1 keeps the
  entry. Its length is ceil(n / 8) for n entries; the unused high bits of the last byte are 0.
- metadata "bsn_mask_format": 2, "bsn_mask_bit_order": "little" and "bsn_mask_shapes":
  {name: [rows, cols]}, the shape of every weight.
Version 1 (the original format; no "bsn_mask_format" key): one bool tensor (1 byte per entry)
shaped like each weight. The decoded metadata of either version has "bsn_mask_format" (1 or 2)
and no "bsn_mask_shapes" or "bsn_mask_bit_order" (the tensors carry them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import atomic_outputs, canonical_safetensors
from bigram_subnetworks.models.layout import Block, Layout, layout_of

Mask = dict[str, torch.Tensor]
RESERVED_METADATA = ("kept", "total", "params_sha256")
# The mask file format (see the module docstring): the version save_mask writes and its keys.
MASK_FORMAT = 2
FORMAT_KEY, SHAPES_KEY, BIT_ORDER_KEY = "bsn_mask_format", "bsn_mask_shapes", "bsn_mask_bit_order"
BIT_ORDER = "little"


def keep_all(layout: Layout) -> Mask:
    return {name: torch.ones(layout.shapes[name], dtype=torch.bool) for name in layout.masked}


def keep_none(layout: Layout) -> Mask:
    return {name: torch.zeros(layout.shapes[name], dtype=torch.bool) for name in layout.masked}


def kept(mask: Mapping[str, torch.Tensor]) -> int:
    return sum(int(t.count_nonzero()) for t in mask.values())


def total(mask: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in mask.values())


def params_sha256(shapes: Mapping[str, Sequence[int]]) -> str:
    """Fingerprint of a set of parameter names and shapes (order-independent)."""
    lines = sorted(f"{name}:{'x'.join(str(n) for n in shape)}" for name, shape in shapes.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def check_mask(mask: Mapping[str, torch.Tensor], layout: Layout, source: str) -> None:
    """Refuse a mask whose names, shapes or dtypes do not fit the model with `layout`."""
    if set(mask) != set(layout.masked):
        extra = sorted(set(mask) - set(layout.masked))
        missing = sorted(set(layout.masked) - set(mask))
        name = (extra or missing)[0]
        what = "not a masked parameter of" if extra else "missing, but a masked parameter of"
        raise UserError(
            f"{source}: mask from another model ({name} is {what} this {layout.arch} model); "
            "use a mask made for this model"
        )
    for name in layout.masked:
        if tuple(mask[name].shape) != layout.shapes[name]:
            raise UserError(
                f"{source}: mask from another model ({name} has shape {tuple(mask[name].shape)}, "
                f"the model {layout.shapes[name]}); use a mask made for this model"
            )
        if mask[name].dtype != torch.bool:
            raise UserError(f"{source}: {name} has dtype {mask[name].dtype}; masks must be bool")


def _same_params(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    if {k: tuple(v.shape) for k, v in a.items()} != {k: tuple(v.shape) for k, v in b.items()}:
        raise UserError("masks cover different parameters or shapes; combine masks of one model")


def complement(mask: Mapping[str, torch.Tensor]) -> Mask:
    return {name: ~t for name, t in mask.items()}


def union(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> Mask:
    _same_params(a, b)
    return {name: a[name] | b[name] for name in a}


def intersection(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> Mask:
    _same_params(a, b)
    return {name: a[name] & b[name] for name in a}


def _random_positions(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """A flat bool tensor of length n with k True entries at uniformly random positions."""
    flat = torch.zeros(n, dtype=torch.bool)
    flat[torch.randperm(n, generator=generator)[:k]] = True
    return flat


def random_like(mask: Mapping[str, torch.Tensor], seed: int) -> Mask:
    """Same kept count in every parameter matrix, positions uniform within each whole matrix."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(mask):
        t = mask[name]
        flat = _random_positions(t.numel(), int(t.count_nonzero()), generator)
        out[name] = flat.reshape(t.shape)
    return {name: out[name] for name in mask}


def random_within_blocks(mask: Mapping[str, torch.Tensor], layout: Layout, seed: int) -> Mask:
    """Same kept count in every Block (Q/K/V/O/MLP-in/MLP-out per layer), uniform within each."""
    check_mask(mask, layout, "random_within_blocks")
    generator = torch.Generator().manual_seed(seed)
    out = {name: torch.zeros_like(mask[name], device="cpu") for name in layout.masked}
    for block in layout.blocks():
        entries = block.select(mask[block.param].cpu())
        flat = _random_positions(block.size, int(entries.count_nonzero()), generator)
        out[block.param][block.index()] = flat.reshape(entries.shape)
    return out


def _set_blocks(mask: Mapping[str, torch.Tensor], blocks: Iterable[Block], keep: bool) -> Mask:
    out = dict(mask)
    copied: set[str] = set()
    for block in blocks:
        if block.param not in copied:
            out[block.param] = out[block.param].clone()
            copied.add(block.param)
        out[block.param][block.index()] = keep
    return out


def set_head(
    mask: Mapping[str, torch.Tensor], layout: Layout, layer: int, head: int, keep: bool
) -> Mask:
    """A copy of `mask` with every Q, K, V and O entry of one head kept (or dropped)."""
    return _set_blocks(mask, layout.head_blocks(layer, head), keep)


def set_mlp_units(
    mask: Mapping[str, torch.Tensor], layout: Layout, layer: int, units: Sequence[int], keep: bool
) -> Mask:
    """A copy of `mask` with the MLP-in and MLP-out entries of `units` kept (or dropped)."""
    return _set_blocks(mask, layout.mlp_unit_blocks(layer, units), keep)


def set_layer(mask: Mapping[str, torch.Tensor], layout: Layout, layer: int, keep: bool) -> Mask:
    """A copy of `mask` with every masked weight of one layer kept (or dropped)."""
    out = dict(mask)
    for name in layout.layer_params(layer):
        out[name] = torch.full_like(mask[name], keep)
    return out


def block_counts(mask: Mapping[str, torch.Tensor], layout: Layout) -> list[dict[str, Any]]:
    """Kept entries and size of every (layer, kind) block, with the parameter it lies in."""
    return [
        {
            "layer": block.layer,
            "kind": block.kind,
            "param": block.param,
            "kept": int(block.select(mask[block.param]).count_nonzero()),
            "size": block.size,
        }
        for block in layout.blocks()
    ]


def head_counts(mask: Mapping[str, torch.Tensor], layout: Layout) -> list[dict[str, Any]]:
    """Kept entries and size of the Q, K, V and O blocks of every attention head."""
    return [
        {
            "layer": layer,
            "head": head,
            "kind": block.kind,
            "param": block.param,
            "kept": int(block.select(mask[block.param]).count_nonzero()),
            "size": block.size,
        }
        for layer in range(layout.n_layers)
        for head in range(layout.n_heads)
        for block in layout.head_blocks(layer, head)
    ]


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as the 1-D uint8 tensor of format version 2 (row-major, little bit order)."""
    flat = mask.detach().cpu().contiguous().reshape(-1).numpy()
    return torch.from_numpy(np.packbits(flat, bitorder=BIT_ORDER))


def unpack_bits(packed: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The bool tensor of `shape` that `pack_bits` packed into `packed`."""
    n = int(np.prod(shape, dtype=np.int64))
    bits = np.unpackbits(packed.numpy(), count=n, bitorder=BIT_ORDER)
    return torch.from_numpy(bits.view(np.bool_)).reshape(tuple(shape))


def _packed_kept(packed: Mapping[str, torch.Tensor]) -> int:
    """Set bits of packed tensors: the kept entries (unused bits are 0), 8× less to read."""
    return sum(int(np.bitwise_count(t.numpy()).sum(dtype=np.int64)) for t in packed.values())


def save_mask(path: Path | str, mask: Mapping[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write a mask file (format version 2) atomically and deterministically (equal masks and
    metadata give byte-identical files); "kept", "total", "params_sha256" and the format keys are
    always recomputed."""
    for name, t in mask.items():
        if t.dtype != torch.bool:
            raise UserError(f"{path}: {name} has dtype {t.dtype}; masks must be bool")
    shapes = {name: list(t.shape) for name, t in mask.items()}
    tensors = {name: pack_bits(t) for name, t in mask.items()}
    encoded = {k: json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    encoded |= {
        "kept": json.dumps(_packed_kept(tensors)),
        "total": json.dumps(total(mask)),
        "params_sha256": json.dumps(params_sha256(shapes)),
        FORMAT_KEY: json.dumps(MASK_FORMAT),
        SHAPES_KEY: json.dumps(shapes, sort_keys=True),
        BIT_ORDER_KEY: json.dumps(BIT_ORDER),
    }
    with atomic_outputs(path) as (temp,):
        temp.write_bytes(canonical_safetensors(save(tensors, metadata=encoded)))


# Metadata keys that identify the weights a mask was trained on (see models.loading).
WEIGHT_IDENTITY_KEYS = ("weights_sha256", "commit")


def check_mask_origin(metadata: dict[str, Any], identity: dict[str, Any], where: str) -> None:
    """Refuse a mask whose metadata names other weights than `identity` (a model's identity)."""
    for key in WEIGHT_IDENTITY_KEYS:
        if key in metadata and key in identity and metadata[key] != identity[key]:
            raise UserError(
                f"{where}: trained on other weights ({key} {str(metadata[key])[:12]}, this "
                f"model's is {str(identity[key])[:12]}); retrain the mask on this model"
            )


def _unpack_file(
    path: Path, stored: dict[str, torch.Tensor], metadata: dict[str, Any]
) -> tuple[Mask, int, int]:
    """The bool tensors of a version 1 or 2 file, its version and its kept count."""
    version = metadata.pop(FORMAT_KEY, 1)
    shapes, bit_order = metadata.pop(SHAPES_KEY, None), metadata.pop(BIT_ORDER_KEY, None)
    if type(version) is int and version == 1:
        for name, t in stored.items():
            if t.dtype != torch.bool:
                raise UserError(
                    f"{path}: {name} has dtype {t.dtype}; a mask file holds bool tensors"
                )
        return stored, 1, kept(stored)
    if type(version) is not int or version != MASK_FORMAT:
        raise UserError(
            f"{path}: mask file format {version!r} is not one this bsn reads (1 or {MASK_FORMAT}); "
            "update bigram-subnetworks"
        )
    if bit_order != BIT_ORDER or not isinstance(shapes, dict) or set(shapes) != set(stored):
        raise UserError(f"{path}: bit order or shapes metadata damaged; delete it and rerun")
    mask = {}
    for name, packed in stored.items():
        if packed.dtype != torch.uint8 or packed.dim() != 1:
            raise UserError(
                f"{path}: {name} has dtype {packed.dtype} and {packed.dim()} dimension(s); a "
                f"version-{MASK_FORMAT} mask file holds 1-D uint8 bit-packed tensors"
            )
        shape = shapes[name]
        if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
            raise UserError(f"{path}: {name} has shape {shape!r}; delete it and rerun")
        n = math.prod(shape)
        spare = -n % 8  # unused high bits of the last byte, always 0
        if packed.numel() != (n + 7) // 8 or (spare and int(packed[-1]) >> (8 - spare)):
            raise UserError(f"{path}: tensors disagree with its metadata; delete it and rerun")
        mask[name] = unpack_bits(packed, shape)
    return mask, version, _packed_kept(stored)


def load_mask(
    path: Path | str, layout: Layout | None = None, identity: dict[str, Any] | None = None
) -> tuple[Mask, dict[str, Any]]:
    """Read a mask file (format version 1 or 2) as bool tensors, and its decoded metadata (with
    "bsn_mask_format" set to the file's version); with `layout` (and a model's `identity`),
    refuse a mask of another model."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: mask file not found; run the stage that makes it")
    try:
        with safe_open(path, framework="pt") as handle:
            raw = handle.metadata() or {}
            stored = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(
            f"{path}: not a readable safetensors file ({reason}); delete it and rerun"
        ) from None
    try:
        metadata = {key: json.loads(value) for key, value in raw.items()}
    except json.JSONDecodeError:
        raise UserError(f"{path}: metadata is not JSON; not a mask written by bsn") from None
    if any(key not in metadata for key in RESERVED_METADATA):
        raise UserError(f"{path}: no kept/total/params_sha256 metadata; not a mask written by bsn")
    mask, version, n_kept = _unpack_file(path, stored, metadata)
    fingerprint = params_sha256({k: v.shape for k, v in mask.items()})
    if (n_kept, total(mask), fingerprint) != tuple(metadata[k] for k in RESERVED_METADATA):
        raise UserError(f"{path}: tensors disagree with its metadata; delete it and rerun")
    if layout is not None:
        check_mask(mask, layout, str(path))
    if identity is not None:
        check_mask_origin(metadata, identity, str(path))
    return mask, {**metadata, FORMAT_KEY: version}


def apply_mask(model: torch.nn.Module, mask: Mapping[str, torch.Tensor]) -> None:
    """Multiply each masked weight of `model` by its mask, in place."""
    check_mask(mask, layout_of(model), "apply_mask")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, keep in mask.items():
            params[name].mul_(keep.to(params[name].device))


@contextlib.contextmanager
def masked(model: torch.nn.Module, mask: Mapping[str, torch.Tensor]) -> Iterator[torch.nn.Module]:
    """Apply `mask` for the duration of the block, then restore the original weights exactly."""
    check_mask(mask, layout_of(model), "masked")  # before touching (or indexing) any weight
    params = dict(model.named_parameters())
    originals = {name: params[name].detach().clone() for name in mask}
    try:
        apply_mask(model, mask)
        yield model
    finally:
        with torch.no_grad():
            for name, weight in originals.items():
                params[name].copy_(weight)


def generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Continue (batch, seq) or (seq,) prompts; returns only the new token ids, same rank.

    Greedy when temperature == 0, else sampling from softmax(logits / temperature) with a
    generator seeded by `seed`. Put the model in eval mode first (dropout would add randomness).
    `vocab_size` is the tokenizer's: ids from it up to the embedding's padded size (Pythia has
    50,304 rows for 50,277 tokens) get logit −inf, so they are never chosen.
    """
    if temperature < 0:
        raise UserError(f"temperature {temperature}: must be >= 0 (0 = greedy)")
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens {max_new_tokens}: must be >= 0")
    if vocab_size is not None and vocab_size < 1:
        raise UserError(f"vocab_size {vocab_size}: must be >= 1")
    device = next(model.parameters()).device
    ids = (input_ids[None] if input_ids.dim() == 1 else input_ids).to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    new, past, step = [], None, ids
    with torch.no_grad():
        for _ in range(max_new_tokens):
            out = model(input_ids=step, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[:, -1].float()
            if vocab_size is not None:
                if vocab_size > logits.shape[-1]:
                    raise UserError(
                        f"the tokenizer has {vocab_size} tokens but the model only "
                        f"{logits.shape[-1]} embedding rows; use the model's own tokenizer"
                    )
                logits[:, vocab_size:] = -torch.inf
            if temperature == 0:
                step = logits.argmax(dim=-1, keepdim=True)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                step = torch.multinomial(probs, 1, generator=generator)
            new.append(step)
    result = torch.cat(new, dim=1) if new else ids.new_empty((ids.shape[0], 0))
    return result[0] if input_ids.dim() == 1 else result
