"""Tokenize stage: documents joined with end-of-text tokens, cut into fixed-length sequences.

Each split becomes `tokens_<split>.parquet` with columns `seq_id` (uint32) and `input_ids`
(list<uint32>, all of length seq_len). The tail that does not fill a sequence is dropped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from bigram_subnetworks.artifacts import TOKENS_EVAL, TOKENS_META, TOKENS_TRAIN
from bigram_subnetworks.config import Config, DataSettings
from bigram_subnetworks.data.tokenizer import LoadedTokenizer
from bigram_subnetworks.io import (
    ArtifactError,
    atomic_outputs,
    read_parquet,
    sha256_file,
    write_json,
    write_parquet,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "eval")
ENCODE_BATCH = 256


def token_stream(texts: list[str], loaded: LoadedTokenizer, desc: str = "encode") -> np.ndarray:
    """All documents' ids, each document followed by the end-of-text id, as one uint32 array."""
    tokenizer = loaded.tokenizer
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    pieces: list[np.ndarray] = []
    eos = np.array([loaded.eos_id], dtype=np.uint32)
    with tqdm(total=len(texts), desc=desc, unit="doc", leave=False) as bar:
        for start in range(0, len(texts), ENCODE_BATCH):
            batch = texts[start : start + ENCODE_BATCH]
            for encoding in encode(batch, add_special_tokens=False):
                pieces.append(np.asarray(encoding.ids, dtype=np.uint32))
                pieces.append(eos)
            bar.update(len(batch))
    return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.uint32)


def cut_sequences(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Reshape a token stream into (n, seq_len), dropping the incomplete tail."""
    n = stream.size // seq_len
    return stream[: n * seq_len].reshape(n, seq_len)


def sample_rows(n: int, cap: int | None, seed: int) -> np.ndarray:
    """Row indices kept under a cap: all of them, or a seeded sample in original order."""
    if cap is None or n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def batch_order(n_sequences: int, steps: int, batch_size: int, seed: int | list[int]) -> np.ndarray:
    """Sequence indices for every training step: seeded epoch permutations, concatenated."""
    rng = np.random.default_rng(seed)
    needed = steps * batch_size
    epochs = -(-needed // n_sequences)
    order = np.concatenate([rng.permutation(n_sequences) for _ in range(epochs)])
    return order[:needed].reshape(steps, batch_size)


def sequences_table(
    sequences: np.ndarray, seq_ids: np.ndarray, chunk_rows: int = 1 << 20
) -> pa.Table:
    """A (seq_id, input_ids list<uint32>) table, built in chunks so list offsets fit in int32."""
    seq_len = sequences.shape[1]
    # List offsets are int32: a chunk must hold fewer than 2**31 ids or they wrap around silently.
    chunk_rows = max(1, min(chunk_rows, (2**31 - 1) // max(seq_len, 1)))
    chunks = []
    for start in range(0, max(len(sequences), 1), chunk_rows):
        block = np.ascontiguousarray(sequences[start : start + chunk_rows], dtype=np.uint32)
        offsets = pa.array(np.arange(0, block.size + 1, seq_len, dtype=np.int32))
        chunks.append(pa.ListArray.from_arrays(offsets, pa.array(block.ravel(), pa.uint32())))
    ids = pa.chunked_array(chunks, type=pa.list_(pa.uint32()))
    return pa.table({"seq_id": pa.array(seq_ids.astype(np.uint32)), "input_ids": ids})


def read_sequences(path: Path | str) -> np.ndarray:
    """Read a tokens_<split>.parquet file into a (n, seq_len) uint32 array."""
    table = read_parquet(path, columns=["input_ids"])
    column = table.column("input_ids").combine_chunks()
    if table.num_rows == 0:
        raise ArtifactError(f"{path}: no sequences; rerun the tokenize stage")
    # From the list offsets in numpy: pyarrow.compute (which `flatten` and the length kernels
    # import) is slow to import, part of every torch job's start-up.
    offsets = column.offsets.to_numpy()
    lengths = np.diff(offsets)
    seq_len = int(lengths[0])
    if (lengths != seq_len).any():
        raise ArtifactError(f"{path}: sequences differ in length; rerun the tokenize stage")
    first = int(offsets[0])
    values = column.values.slice(first, int(offsets[-1]) - first).to_numpy(zero_copy_only=False)
    return values.astype(np.uint32, copy=False).reshape(-1, seq_len)


def tokenize_corpus(
    documents_path: Path,
    loaded: LoadedTokenizer,
    settings: DataSettings,
    seed: int,
    output_dir: Path,
    tokenizer_path: Path | None = None,
) -> dict[str, Any]:
    """Run the tokenize stage; returns tokens.json's content."""
    table = read_parquet(documents_path, columns=["split", "text"])
    caps = {"train": settings.max_train_sequences, "eval": settings.max_eval_sequences}
    tables: dict[str, pa.Table] = {}
    summary: dict[str, Any] = {
        "seq_len": settings.seq_len,
        "vocab_size": loaded.vocab_size,
        "eos_id": loaded.eos_id,
        "seed": seed,
        "documents_sha256": sha256_file(documents_path),
        "tokenizer_sha256": sha256_file(tokenizer_path) if tokenizer_path else None,
        "splits": {},
    }
    import pyarrow.compute as pc

    for offset, split in enumerate(SPLITS):
        texts = table.filter(pc.equal(table["split"], split)).column("text").to_pylist()
        stream = token_stream(texts, loaded, desc=f"encode {split}")
        sequences = cut_sequences(stream, settings.seq_len)
        if len(sequences) == 0:
            raise ArtifactError(
                f"{documents_path}: the {split} split has {stream.size} tokens, fewer than one "
                f"sequence of {settings.seq_len}; add text, lower data.seq_len or change "
                "corpus.eval_fraction"
            )
        rows = sample_rows(len(sequences), caps[split], seed + offset)
        tables[split] = sequences_table(sequences[rows], rows)
        summary["splits"][split] = {
            "documents": len(texts),
            "tokens_in_documents": int(stream.size),
            "sequences_available": len(sequences),
            "sequences": len(rows),
        }
    paths = [output_dir / Path(artifact.path).name for artifact in (TOKENS_TRAIN, TOKENS_EVAL)]
    with atomic_outputs(*paths, output_dir / Path(TOKENS_META.path).name) as (*temps, meta):
        for split, temp in zip(SPLITS, temps, strict=True):
            write_parquet(tables[split], temp, seed=seed, row_group_size=65536)
        write_json(summary, meta)
    log.info(
        "tokenized: %d train / %d eval sequences of %d tokens -> %s",
        summary["splits"]["train"]["sequences"],
        summary["splits"]["eval"]["sequences"],
        settings.seq_len,
        output_dir,
    )
    return summary


def run_stage(
    cfg: Config,
    *,
    documents: Path,
    tokenizer: Path,
    tokens_train: Path,
    tokens_eval: Path,
    tokens_meta: Path,
) -> None:
    """The tokenize stage: train and eval sequences (written beside each other)."""
    from bigram_subnetworks.data.tokenizer import TOKENIZER_FILE, load_tokenizer

    tokenize_corpus(
        documents,
        load_tokenizer(tokenizer),
        cfg.data,
        cfg.seed,
        tokens_train.parent,
        tokenizer_path=tokenizer / TOKENIZER_FILE,
    )
