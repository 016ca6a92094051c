"""A real Hugging Face cache layout built by hand (no network): tiny models with several revisions.

The layout is what `snapshot_download` writes (see shared/hf-offline.md):
`models--<org>--<name>/refs/<revision>` holds a commit, `snapshots/<commit>/` the files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tokenizers import Tokenizer

from bigram_subnetworks.data.tokenizer import EOS_TOKEN
from tiny_models import tiny_lm


def commit_of(repo: str, revision: str) -> str:
    """A fixed 40-hex commit for a revision of a test repository."""
    return hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()


def add_revision(cache: Path, repo: str, revision: str, files: dict[str, bytes]) -> str:
    """Write one revision's snapshot and its ref into the cache; returns its commit."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = commit_of(repo, revision)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (snapshot / name).write_bytes(content)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / revision).write_text(commit)
    return commit


def tiny_model_files(
    vocab_size: int, seed: int, tokenizer: Tokenizer | None, family: str = "gpt_neox"
) -> dict[str, bytes]:
    """`save_pretrained` files of a seeded random tiny model (and a tokenizer, if given):
    GPT-NeoX, or Llama with grouped-query attention, a gated MLP and tied embeddings."""
    import tempfile

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
        if tokenizer is not None:
            tokenizer.save(str(Path(folder) / "tokenizer.json"))
            config_json = f'{{"eos_token": "{EOS_TOKEN}"}}'
            (Path(folder) / "tokenizer_config.json").write_text(config_json)
        return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def build_hub_cache(
    cache: Path,
    repo: str,
    revisions: dict[str, int],
    tokenizer: Tokenizer | None = None,
    family: str = "gpt_neox",
) -> dict[str, str]:
    """A repository with one seeded tiny model per revision (revision -> seed); its commits."""
    vocab = tokenizer.get_vocab_size() if tokenizer is not None else 64
    return {
        revision: add_revision(
            cache, repo, revision, tiny_model_files(vocab, seed, tokenizer, family)
        )
        for revision, seed in revisions.items()
    }
