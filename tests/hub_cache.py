"""A real Hugging Face cache layout built by hand (no network): tiny models with several revisions.

The layout is what `snapshot_download` writes (see shared/hf-offline.md):
`models--<org>--<name>/refs/<revision>` holds a commit, `snapshots/<commit>/<file>` is a relative
symlink to `blobs/<id>`, where a large (Git LFS) file's id is its sha256 and a small file's its Git
blob id (sha1). Revisions with equal content share one blob, as branches of a real repository do.

Weights come in any layout a published revision has: `model.safetensors`, `pytorch_model.bin`,
either sharded with its index, or none at all.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

from tokenizers import Tokenizer

from bigram_subnetworks.data.tokenizer import EOS_TOKEN
from tiny_models import tiny_lm


def commit_of(repo: str, revision: str) -> str:
    """A fixed 40-hex commit for a revision of a test repository."""
    return hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()


# The suffixes the Hub's default .gitattributes stores in Git LFS (the weights among them).
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".model")


def blob_id(name: str, content: bytes) -> str:
    """The blob name a cache gives a file: sha256 for LFS files, else Git's object id."""
    if name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(content).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def add_revision(cache: Path, repo: str, revision: str, files: dict[str, bytes]) -> str:
    """Write one revision's snapshot (symlinks into blobs/) and its ref; returns its commit."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = commit_of(repo, revision)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "blobs").mkdir(exist_ok=True)
    for name, content in files.items():
        blob = folder / "blobs" / blob_id(name, content)
        if not blob.exists():
            blob.write_bytes(content)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / revision).write_text(commit)
    return commit


def _shard_names(weights: str, shards: int) -> list[str]:
    stem, suffix = (
        ("model", ".safetensors") if weights == "safetensors" else ("pytorch_model", ".bin")
    )
    if shards == 1:
        return [stem + suffix]
    return [f"{stem}-{i:05d}-of-{shards:05d}{suffix}" for i in range(1, shards + 1)]


def weight_files(tensors: dict, weights: str = "safetensors", shards: int = 1) -> dict[str, bytes]:
    """A state dict as a revision's weight files: `safetensors` or `bin` (torch.save, as
    `save_pretrained` wrote them before safetensors), in `shards` files with an index."""
    import torch
    from safetensors.torch import save

    from bigram_subnetworks.io import canonical_safetensors

    names = sorted(tensors)
    files = _shard_names(weights, shards)
    size = -(-len(names) // shards)
    weight_map, out = {}, {}
    for i, file in enumerate(files):
        part = {name: tensors[name].contiguous() for name in names[i * size : (i + 1) * size]}
        if weights == "safetensors":
            out[file] = canonical_safetensors(save(part, metadata={"format": "pt"}))
        else:
            buffer = io.BytesIO()
            torch.save(part, buffer)
            out[file] = buffer.getvalue()
        weight_map |= dict.fromkeys(part, file)
    if shards > 1:
        index = (
            "model.safetensors.index.json"
            if weights == "safetensors"
            else "pytorch_model.bin.index.json"
        )
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        body = {"metadata": {"total_size": total}, "weight_map": weight_map}
        out[index] = json.dumps(body, indent=2, sort_keys=True).encode()
    return out


def tiny_model_files(
    vocab_size: int,
    seed: int,
    tokenizer: Tokenizer | None,
    family: str = "gpt_neox",
    weights: str = "safetensors",
    shards: int = 1,
) -> dict[str, bytes]:
    """The files of a revision holding a seeded random tiny model (and a tokenizer, if given):
    GPT-NeoX, or Llama with grouped-query attention, a gated MLP and tied embeddings. `weights`:
    `safetensors`, `bin` (pickled, as older revisions hold) or `none`; `shards` weight files."""
    import tempfile

    from safetensors.torch import load_file

    shared = {"vocab": vocab_size, "positions": 64, "seed": seed}
    shared |= {"bos_token_id": 0, "eos_token_id": 0}
    if family == "llama":
        model = tiny_lm(
            "llama", d=32, heads=4, ff=48, num_key_value_heads=2, tie_word_embeddings=True, **shared
        )
    else:
        model = tiny_lm(ff=32, tie_word_embeddings=False, **shared)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        tensors = load_file(Path(folder) / "model.safetensors")  # tied weights saved once
        (Path(folder) / "model.safetensors").unlink()
        if tokenizer is not None:
            tokenizer.save(str(Path(folder) / "tokenizer.json"))
            config_json = f'{{"eos_token": "{EOS_TOKEN}"}}'
            (Path(folder) / "tokenizer_config.json").write_text(config_json)
        files = {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}
    if weights != "none":
        files |= weight_files(tensors, weights, shards)
    return files


def build_hub_cache(
    cache: Path,
    repo: str,
    revisions: dict[str, int],
    tokenizer: Tokenizer | None = None,
    family: str = "gpt_neox",
    weights: str = "safetensors",
    shards: int = 1,
) -> dict[str, str]:
    """A repository with one seeded tiny model per revision (revision -> seed); its commits.
    Revisions of the same seed hold the same files, so they share blobs."""
    vocab = tokenizer.get_vocab_size() if tokenizer is not None else 64
    return {
        revision: add_revision(
            cache,
            repo,
            revision,
            tiny_model_files(vocab, seed, tokenizer, family, weights, shards),
        )
        for revision, seed in revisions.items()
    }
