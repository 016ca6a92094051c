"""Bigram statistics stage: vectorised (prev, next) counts over fixed-length sequences.

The first token of every sequence is counted after the start context `prev = vocab_size`, which
is never used as a prediction context later. Pairs are packed into one integer key
(prev * vocab_size + next; uint32 when it fits, else uint64), sorted with numpy and run-length
counted, so there is no Python loop over tokens.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from bigram_subnetworks.artifacts import BIGRAM_STATS, TOKENS_META
from bigram_subnetworks.config import Config
from bigram_subnetworks.data.tokenize import read_sequences
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import (
    ArtifactError,
    atomic_outputs,
    read_json,
    read_parquet,
    sha256_file,
    write_json,
    write_parquet,
)

log = logging.getLogger(__name__)

CHUNK_TOKENS = 1 << 25  # ~32M tokens per counting pass bounds the temporary memory


@dataclass(frozen=True)
class BigramCounts:
    """Sorted unique (prev, next) pairs with their counts, plus unigram counts."""

    prev: np.ndarray  # uint32, in [0, vocab_size]; vocab_size is the start context
    next: np.ndarray  # uint32, in [0, vocab_size)
    count: np.ndarray  # uint64
    unigram: np.ndarray  # uint64, length vocab_size: occurrences of each token
    vocab_size: int
    n_sequences: int

    @property
    def n_tokens(self) -> int:
        return int(self.unigram.sum())


def key_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    largest_key = vocab_size * vocab_size + vocab_size - 1  # prev = vocab_size, next = V - 1
    return np.uint32 if largest_key < 2**32 else np.uint64


def count_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique values of `keys` and how often each occurs (sort + run lengths)."""
    return count_sorted_keys(np.sort(keys))


def count_sorted_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`count_keys` of keys already sorted, with temporaries of a byte per key and 8 per unique."""
    if keys.size == 0:
        return keys, np.empty(0, dtype=np.uint64)
    boundary = np.empty(keys.size, dtype=bool)
    boundary[0] = True
    np.not_equal(keys[1:], keys[:-1], out=boundary[1:])
    starts = np.flatnonzero(boundary)
    del boundary
    counts = np.empty(starts.size, dtype=np.uint64)
    np.subtract(starts[1:], starts[:-1], out=counts[:-1], casting="unsafe")
    counts[-1] = keys.size - starts[-1]
    return keys[starts], counts


def _pair_keys(tokens: np.ndarray, vocab_size: int, dtype: type) -> np.ndarray:
    prev = np.empty(tokens.shape, dtype=dtype)
    prev[:, 0] = vocab_size
    prev[:, 1:] = tokens[:, :-1]
    return (prev * dtype(vocab_size) + tokens.astype(dtype, copy=False)).ravel()


def check_tokens(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """`tokens` as a 2-D (sequences, positions) array of ids in [0, vocab_size); ValueError else."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 1:
        raise ValueError(f"expected a 2-D (sequences, positions) array, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(
            f"token ids must lie in [0, {vocab_size}); found {tokens.min()}..{tokens.max()}"
        )
    return tokens


def count_packed(
    tokens: np.ndarray,
    pack: Callable[[np.ndarray], np.ndarray],
    dtype: type,
    desc: str,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique packed keys of all sequences and their counts: `pack` turns a chunk of
    sequences into one key per counted position; chunks are sort + run-length counted and merged
    (the one counting path of bigrams and n-grams)."""
    rows_per_chunk = max(1, CHUNK_TOKENS // tokens.shape[1])
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    starts = range(0, tokens.shape[0], rows_per_chunk)
    for start in tqdm(starts, desc=desc, unit="chunk", disable=not progress):
        parts.append(count_keys(pack(tokens[start : start + rows_per_chunk])))
    if len(parts) == 1:
        return parts[0]
    if parts:
        return _merge_counts(parts)
    return np.empty(0, dtype=dtype), np.empty(0, dtype=np.uint64)


def count_bigrams(tokens: np.ndarray, vocab_size: int, progress: bool = False) -> BigramCounts:
    """Count bigrams in a (n_sequences, seq_len) array of token ids."""
    tokens = check_tokens(tokens, vocab_size)
    dtype = key_dtype(vocab_size)
    keys, counts = count_packed(
        tokens, lambda chunk: _pair_keys(chunk, vocab_size, dtype), dtype, "count bigrams", progress
    )
    unigram = np.zeros(vocab_size, dtype=np.uint64)
    rows_per_chunk = max(1, CHUNK_TOKENS // tokens.shape[1])  # bounds bincount's int64 copy
    for start in range(0, tokens.shape[0], rows_per_chunk):
        chunk = tokens[start : start + rows_per_chunk].ravel()
        unigram += np.bincount(chunk, minlength=vocab_size).astype(np.uint64)
    return counts_from_keys(keys, counts, unigram, vocab_size, int(tokens.shape[0]))


def counts_from_keys(
    keys: np.ndarray, counts: np.ndarray, unigram: np.ndarray, vocab_size: int, n_sequences: int
) -> BigramCounts:
    """BigramCounts from sorted unique packed keys (prev * vocab_size + next) and their counts."""
    prev, nxt = np.divmod(keys, keys.dtype.type(vocab_size))
    return BigramCounts(
        prev=prev.astype(np.uint32, copy=False),
        next=nxt.astype(np.uint32, copy=False),
        count=counts.astype(np.uint64, copy=False),
        unigram=unigram,
        vocab_size=vocab_size,
        n_sequences=n_sequences,
    )


def _merge_counts(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    keys = np.concatenate([k for k, _ in parts])
    counts = np.concatenate([c for _, c in parts])
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return keys[starts], np.add.reduceat(counts, starts).astype(np.uint64)


def write_bigram_stats(
    counts: BigramCounts, output_dir: Path, extra_meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write bigrams.parquet, unigrams.parquet and bigrams.json atomically."""
    bigrams = pa.table(
        {
            "prev": pa.array(counts.prev, pa.uint32()),
            "next": pa.array(counts.next, pa.uint32()),
            "count": pa.array(counts.count, pa.uint64()),
        }
    )
    unigrams = pa.table(
        {
            "token": pa.array(np.arange(counts.vocab_size, dtype=np.uint32)),
            "count": pa.array(counts.unigram, pa.uint64()),
        }
    )
    meta = {
        "vocab_size": counts.vocab_size,
        "start_context_id": counts.vocab_size,
        "n_tokens": counts.n_tokens,
        "n_sequences": counts.n_sequences,
        "n_bigram_types": int(counts.count.size),
        "n_contexts_seen": int(np.unique(counts.prev[counts.prev < counts.vocab_size]).size),
        **(extra_meta or {}),
    }
    files = [output_dir / name for name in BIGRAM_STATS.files]
    with atomic_outputs(*files) as (big, uni, js):
        write_parquet(bigrams, big, row_group_size=1 << 20)
        write_parquet(unigrams, uni)
        write_json(meta, js)
    return meta


def read_bigram_counts(data_dir: Path | str) -> BigramCounts:
    """Read the bigram statistics written by `write_bigram_stats`."""
    bigrams_file, unigrams_file, meta_file = (Path(data_dir) / name for name in BIGRAM_STATS.files)
    meta = read_json(meta_file)
    table = read_parquet(bigrams_file, columns=["prev", "next", "count"])
    unigrams = read_parquet(unigrams_file, columns=["token", "count"])
    if unigrams.num_rows != meta["vocab_size"]:
        raise ArtifactError(
            f"{unigrams_file}: {unigrams.num_rows} rows, expected "
            f"{meta['vocab_size']}; rerun the bigram_stats stage"
        )
    return BigramCounts(
        prev=table.column("prev").to_numpy(),
        next=table.column("next").to_numpy(),
        count=table.column("count").to_numpy(),
        unigram=unigrams.column("count").to_numpy(),
        vocab_size=int(meta["vocab_size"]),
        n_sequences=int(meta["n_sequences"]),
    )


def build_bigram_stats(
    tokens_path: Path, output_dir: Path, tokens_meta: Path | None = None
) -> dict[str, Any]:
    """Run the bigram_stats stage on a tokens_train.parquet file (and its tokens.json, by default
    the one beside it)."""
    summary = read_json(tokens_meta or tokens_path.parent / Path(TOKENS_META.path).name)
    tokens = read_sequences(tokens_path)
    vocab_size = int(summary["vocab_size"])
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise ArtifactError(
            f"{tokens_path}: token id {int(tokens.max())} is outside the vocabulary of "
            f"{vocab_size}; rerun the tokenize stage"
        )
    counts = count_bigrams(tokens, vocab_size, progress=True)
    meta = write_bigram_stats(
        counts,
        output_dir,
        {"seq_len": int(tokens.shape[1]), "tokens_sha256": sha256_file(tokens_path)},
    )
    log.info(
        "bigrams: %d types over %d tokens (%d sequences) -> %s",
        meta["n_bigram_types"],
        meta["n_tokens"],
        meta["n_sequences"],
        output_dir,
    )
    return meta


def pair_counts(counts: BigramCounts, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """count(prev, next) for arrays of pairs (0 where the pair was never seen)."""
    vocab = np.uint64(counts.vocab_size)
    table_keys = counts.prev.astype(np.uint64) * vocab + counts.next.astype(np.uint64)
    query = prev.astype(np.uint64) * vocab + nxt.astype(np.uint64)
    where = np.searchsorted(table_keys, query)
    where_clipped = np.minimum(where, max(table_keys.size - 1, 0))
    found = (where < table_keys.size) & (table_keys[where_clipped] == query)
    return np.where(found, counts.count[where_clipped], 0).astype(np.float64)


def context_totals(counts: BigramCounts) -> np.ndarray:
    """count(prev, ·) for every real context 0..V-1 (the start context is left out)."""
    real = counts.prev < counts.vocab_size
    return np.bincount(
        counts.prev[real],
        weights=counts.count[real].astype(np.float64),
        minlength=counts.vocab_size,
    )[: counts.vocab_size]


BASELINE_ALPHAS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)


def bigram_baseline_cross_entropy(
    counts: BigramCounts, sequences: np.ndarray, alphas: tuple[float, ...] = BASELINE_ALPHAS
) -> dict[str, float]:
    """Eval cross-entropy (nats) of a smoothed bigram model: the bar a language model must clear.

    The unsmoothed bigram model gives infinite loss on pairs unseen in training, so the baseline
    interpolates it with an add-one unigram model, P = (1 - α)·P_bigram + α·P_unigram (contexts
    never seen use P_unigram alone), and reports the best α on the eval data itself: an
    optimistic baseline, which makes "the model beats the bigram model" a conservative claim.
    """
    prev = sequences[:, :-1].ravel()
    nxt = sequences[:, 1:].ravel()
    vocab = counts.vocab_size
    unigram = (counts.unigram.astype(np.float64) + 1.0) / (counts.unigram.sum() + vocab)
    totals = context_totals(counts)[prev]
    seen = totals > 0
    bigram = np.divide(
        pair_counts(counts, prev, nxt), totals, out=np.zeros_like(totals), where=seen
    )
    losses = {}
    for alpha in alphas:
        prob = np.where(seen, (1 - alpha) * bigram + alpha * unigram[nxt], unigram[nxt])
        losses[f"{alpha:g}"] = float(-np.log(prob).mean())
    best = min(losses, key=losses.__getitem__)
    return {"cross_entropy": losses[best], "alpha": float(best), "n_predictions": int(prev.size)}


def build_streamed_bigram_stats(
    cfg: Config, bigram_tokens: int, documents_path: Path, tokenizer_dir: Path, output_dir: Path
) -> dict[str, Any]:
    """Count data.bigram_tokens tokens of the train documents, streamed from the corpus source
    (the eval split's documents, named in documents.parquet, are left out)."""
    from bigram_subnetworks.data.bigram_stream import stream_bigram_stats, train_documents
    from bigram_subnetworks.data.corpus import iter_documents
    from bigram_subnetworks.data.tokenizer import TOKENIZER_FILE, load_tokenizer

    table = read_parquet(documents_path, columns=["doc_id", "split"])
    eval_ids = sorted(
        doc_id
        for doc_id, split in zip(
            table.column("doc_id").to_pylist(), table.column("split").to_pylist(), strict=True
        )
        if split == "eval"
    )
    loaded = load_tokenizer(tokenizer_dir)
    fingerprint = {
        "corpus": cfg.corpus.model_dump(mode="json"),
        "eval_ids_sha256": hashlib.sha256("\n".join(eval_ids).encode()).hexdigest(),
        "tokenizer_sha256": sha256_file(Path(tokenizer_dir) / TOKENIZER_FILE),
        "vocab_size": loaded.vocab_size,
        "eos_id": loaded.eos_id,
    }
    return stream_bigram_stats(
        train_documents(lambda: iter_documents(cfg.corpus), set(eval_ids)),
        loaded,
        cfg.data.seq_len,
        bigram_tokens,
        output_dir,
        fingerprint,
    )


def run_stage(
    cfg: Config,
    *,
    bigram_stats: Path,
    tokens_train: Path | None = None,
    tokens_meta: Path | None = None,
    documents: Path | None = None,
    tokenizer: Path | None = None,
    source: Path | None = None,
) -> None:
    """The bigram_stats stage: over the train sequences, or (data.bigram_tokens) streamed from the
    corpus source (`source`: the local corpus folder, tracked by the front-ends)."""
    bigram_tokens = cfg.data.bigram_tokens
    if bigram_tokens is None:
        if tokens_train is None:
            raise UserError("bigram-stats: --tokens-train is required without data.bigram_tokens")
        build_bigram_stats(tokens_train, bigram_stats, tokens_meta)
        return
    if documents is None or tokenizer is None:
        raise UserError(
            "bigram-stats: --documents and --tokenizer are required with data.bigram_tokens"
        )
    build_streamed_bigram_stats(cfg, bigram_tokens, documents, tokenizer, bigram_stats)
