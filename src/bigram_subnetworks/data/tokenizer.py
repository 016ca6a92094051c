"""Tokenizer stage: train a byte-level BPE on the train split, or adopt a model's own tokenizer.

Either way the stage writes `tokenizer.json` (Hugging Face `tokenizers` format) and `meta.json`
(end-of-text token and id, vocabulary size, provenance) under data/tokenizers/<name>/.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from bigram_subnetworks.artifacts import TOKENIZER
from bigram_subnetworks.config import Config, PretrainedTokenizer, TrainedTokenizer
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import (
    ArtifactError,
    atomic_outputs,
    read_json,
    read_parquet,
    sha256_file,
    write_json,
)

log = logging.getLogger(__name__)

TOKENIZER_FILE, META_FILE = TOKENIZER.files
EOS_TOKEN = "<|endoftext|>"


class TokenizerError(UserError):
    """The tokenizer cannot be made or read; the message names the source and the fix."""


@dataclass(frozen=True)
class LoadedTokenizer:
    tokenizer: Tokenizer
    eos_token: str
    eos_id: int
    vocab_size: int


def vocab_size_of(tokenizer: Tokenizer) -> int:
    """Number of ids the tokenizer can emit (highest id + 1, added tokens included)."""
    return max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1


def train_bpe(
    texts: list[str], vocab_size: int, min_frequency: int, show_progress: bool = True
) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE; id 0 is the end-of-text token."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def train_split_texts(documents_path: Path) -> list[str]:
    import pyarrow.compute as pc

    table = read_parquet(documents_path, columns=["split", "text"])
    train = table.filter(pc.equal(table["split"], "train"))
    if train.num_rows == 0:
        raise ArtifactError(f"{documents_path}: no train documents; check corpus.eval_fraction")
    return train.column("text").to_pylist()


def _pretrained_files(cfg: PretrainedTokenizer) -> tuple[Path, Path | None]:
    """tokenizer.json (and tokenizer_config.json when present) from a local dir or the Hub."""
    local = Path(cfg.model)
    if local.is_dir():
        path = local / TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerError(
                f"{local}: no tokenizer.json; save a fast tokenizer there or set tokenizer.model"
            )
        config = local / "tokenizer_config.json"
        return path, config if config.is_file() else None
    if local.suffix == ".json" and local.is_file():
        return local, None
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(cfg.model, TOKENIZER_FILE, revision=cfg.revision))
    except Exception as exc:
        raise TokenizerError(
            f"tokenizer.model {cfg.model!r}: not a local directory and not loadable from the "
            f"Hub ({type(exc).__name__}); check the id, the revision and your network"
        ) from None
    try:
        config = Path(hf_hub_download(cfg.model, "tokenizer_config.json", revision=cfg.revision))
    except Exception:
        config = None
    return path, config


def _configured_eos(config_path: Path | None) -> str | None:
    if config_path is None:
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TokenizerError(
            f"{config_path}: not valid JSON; fix it or set tokenizer.eos_token"
        ) from None
    value = config.get("eos_token") if isinstance(config, dict) else None
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def adopt_pretrained(cfg: PretrainedTokenizer) -> tuple[Tokenizer, str, dict[str, Any]]:
    path, config_path = _pretrained_files(cfg)
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception:
        raise TokenizerError(f"{path}: not a valid tokenizers JSON file") from None
    eos = cfg.eos_token or _configured_eos(config_path) or EOS_TOKEN
    if tokenizer.token_to_id(eos) is None:
        raise TokenizerError(
            f"{path}: end-of-text token {eos!r} is not in the vocabulary; set tokenizer.eos_token"
        )
    provenance = {"model": cfg.model, "revision": cfg.revision, "sha256": sha256_file(path)}
    return tokenizer, eos, provenance


def build_tokenizer(
    cfg: TrainedTokenizer | PretrainedTokenizer, documents_path: Path, output_dir: Path
) -> dict[str, Any]:
    """Run the tokenizer stage; returns meta.json's content."""
    if isinstance(cfg, TrainedTokenizer):
        texts = train_split_texts(documents_path)
        log.info("training byte-level BPE (vocab %d) on %d documents", cfg.vocab_size, len(texts))
        tokenizer = train_bpe(texts, cfg.vocab_size, cfg.min_frequency)
        eos = EOS_TOKEN
        provenance: dict[str, Any] = {
            "trained_on": str(documents_path),
            "documents_sha256": sha256_file(documents_path),
            "min_frequency": cfg.min_frequency,
            "requested_vocab_size": cfg.vocab_size,
        }
    else:
        tokenizer, eos, provenance = adopt_pretrained(cfg)
    meta = {
        "name": cfg.name,
        "source": cfg.source,
        "eos_token": eos,
        "eos_id": tokenizer.token_to_id(eos),
        "vocab_size": vocab_size_of(tokenizer),
        **provenance,
    }
    with atomic_outputs(output_dir / TOKENIZER_FILE, output_dir / META_FILE) as (tok, met):
        tokenizer.save(str(tok))
        write_json(meta, met)
    log.info("tokenizer %s: %d ids, eos %r -> %s", cfg.name, meta["vocab_size"], eos, output_dir)
    return meta


def load_tokenizer(tokenizer_dir: Path | str) -> LoadedTokenizer:
    """Load a tokenizer folder written by the tokenizer stage."""
    tokenizer_dir = Path(tokenizer_dir)
    path = tokenizer_dir / TOKENIZER_FILE
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found; run the tokenizer stage")
    meta = read_json(tokenizer_dir / META_FILE)
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception:
        raise ArtifactError(
            f"{path}: not a valid tokenizer file; rerun the tokenizer stage"
        ) from None
    return LoadedTokenizer(tokenizer, meta["eos_token"], meta["eos_id"], meta["vocab_size"])


def run_stage(cfg: Config, *, documents: Path | None, tokenizer: Path) -> None:
    """The tokenizer stage (`documents`: the corpus, when the tokenizer is trained on it)."""
    build_tokenizer(cfg.tokenizer, documents, tokenizer)
