"""N-gram statistics: (context of n − 1 tokens, next token) counts over fixed-length sequences.

The counting rule is the bigram rule (`data.bigrams`) for every order: within each sequence,
position t's next token x_t is counted after the context x_{t-n+1} .. x_{t-1}, padded with the
start id (= vocab size) before the sequence start, so the first token of a sequence is counted
after the all-start context. Each (context, next) is packed into one integer with
ceil(log2(V + 1)) bits a token, oldest first (so numeric order is lexicographic order), and counted
by the bigram path's sort + run-length count (`count_packed`). Order 1 is the unigram table (one
empty context), order 2 the bigram table; tables of order >= 3 are the `ngram_stats` stage's.

A table is CSR over its contexts: `context` (K × (n − 1)) are the unique contexts sorted, row k's
entries are `next[crow[k]:crow[k+1]]` (sorted) with their `count`s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from bigram_subnetworks.artifacts import (
    BIGRAM_STATS,
    NGRAM_META,
    NGRAM_STATS,
    ngram_schema,
)
from bigram_subnetworks.config import Config
from bigram_subnetworks.data.bigrams import (
    BigramCounts,
    check_tokens,
    count_packed,
)
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

if TYPE_CHECKING:  # the context lookup runs in torch jobs; the ngram_stats stage needs no torch
    import torch

log = logging.getLogger(__name__)


def token_bits(vocab_size: int) -> int:
    """Bits a packed token takes: ids 0 .. vocab_size (the start id included)."""
    return max(int(vocab_size).bit_length(), 1)


def packed_dtype(vocab_size: int, order: int) -> type[np.unsignedinteger]:
    """uint32 or uint64 for packed (context, next) keys; ValueError when they need > 64 bits."""
    bits = order * token_bits(vocab_size)
    if bits > 64:
        raise ValueError(
            f"order-{order} keys of a {vocab_size}-token vocabulary need {bits} bits; at most 64 "
            f"fit, so lower the order (at most {64 // token_bits(vocab_size)} for this vocabulary)"
        )
    return np.uint32 if bits <= 32 else np.uint64


@dataclass(frozen=True)
class NgramCounts:
    """The counts of one order: CSR rows over the unique contexts seen (see the module doc)."""

    order: int
    vocab_size: int
    context: np.ndarray  # (K, order - 1) uint32, sorted rows; vocab_size = the start padding
    crow: np.ndarray  # (K + 1,) int64
    next: np.ndarray  # (nnz,) uint32, sorted within a row
    count: np.ndarray  # (nnz,) uint64
    n_sequences: int

    @property
    def n_contexts(self) -> int:
        return int(self.context.shape[0])

    @cached_property
    def context_keys(self) -> np.ndarray:
        """Each context packed into one int64 (oldest token in the high bits), sorted."""
        return pack_contexts(self.context.astype(np.int64), self.vocab_size)

    @cached_property
    def row_total(self) -> np.ndarray:
        """count(context, ·) per row, float64 (exact: integer sums below 2^53)."""
        cumulative = np.concatenate(([0], np.cumsum(self.count, dtype=np.uint64)))
        return np.diff(cumulative[self.crow]).astype(np.float64)

    @cached_property
    def entry_keys(self) -> np.ndarray:
        """row * V + next per entry, int64, sorted: the key of a (row, next) lookup."""
        rows = np.repeat(np.arange(self.n_contexts, dtype=np.int64), np.diff(self.crow))
        return rows * self.vocab_size + self.next.astype(np.int64)

    def probability(self, rows: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """P(next | context row) (float64, unsmoothed; 0 where rows < 0 or the pair is unseen)."""
        rows = np.asarray(rows, dtype=np.int64)
        nxt = np.asarray(nxt, dtype=np.int64)
        if self.entry_keys.size == 0:
            return np.zeros(rows.shape, dtype=np.float64)
        query = np.maximum(rows, 0) * self.vocab_size + nxt
        where = np.minimum(np.searchsorted(self.entry_keys, query), self.entry_keys.size - 1)
        found = (rows >= 0) & (self.entry_keys[where] == query)
        counts = np.where(found, self.count[where], 0)
        totals = self.row_total[np.maximum(rows, 0)]
        return counts.astype(np.float64) / np.maximum(totals, 1.0)


def pack_contexts(context: np.ndarray, vocab_size: int) -> np.ndarray:
    """(..., n − 1) contexts as int64 keys, oldest token in the high bits."""
    bits = token_bits(vocab_size)
    keys = np.zeros(context.shape[:-1], dtype=np.int64)
    for column in range(context.shape[-1]):
        keys = (keys << bits) | context[..., column].astype(np.int64)
    return keys


def _ngram_keys(tokens: np.ndarray, vocab_size: int, order: int, dtype: type) -> np.ndarray:
    """Packed (context, next) keys of every position of a chunk of sequences."""
    n_seq, seq_len = tokens.shape
    padded = np.full((n_seq, seq_len + order - 1), vocab_size, dtype=dtype)
    padded[:, order - 1 :] = tokens
    bits = dtype(token_bits(vocab_size))
    keys = np.zeros((n_seq, seq_len), dtype=dtype)
    for column in range(order):
        keys <<= bits
        keys |= padded[:, column : column + seq_len]
    return keys.ravel()


def _from_keys(
    keys: np.ndarray, counts: np.ndarray, vocab_size: int, order: int, n_sequences: int
) -> NgramCounts:
    bits = token_bits(vocab_size)
    keys = keys.astype(np.uint64, copy=False)
    mask = np.uint64((1 << bits) - 1)
    context_key = keys >> np.uint64(bits)
    if order == 1:
        starts = np.zeros(1, dtype=np.int64)
    else:
        boundary = np.ones(keys.size, dtype=bool)
        np.not_equal(context_key[1:], context_key[:-1], out=boundary[1:])
        starts = np.flatnonzero(boundary)
    context = np.empty((starts.size, order - 1), dtype=np.uint32)
    row_keys = context_key[starts] if keys.size else np.zeros(starts.size, dtype=np.uint64)
    for column in range(order - 1):
        shift = np.uint64(bits * (order - 2 - column))
        context[:, column] = (row_keys >> shift) & mask
    return NgramCounts(
        order=order,
        vocab_size=vocab_size,
        context=context,
        crow=np.append(starts, keys.size).astype(np.int64),
        next=(keys & mask).astype(np.uint32),
        count=counts.astype(np.uint64, copy=False),
        n_sequences=n_sequences,
    )


def count_ngrams(
    tokens: np.ndarray, vocab_size: int, order: int, progress: bool = False
) -> NgramCounts:
    """Count the order-n (context, next) pairs of a (n_sequences, seq_len) array of token ids."""
    if order < 1:
        raise ValueError(f"an n-gram order is at least 1, got {order}")
    tokens = check_tokens(tokens, vocab_size)
    dtype = packed_dtype(vocab_size, order)
    keys, counts = count_packed(
        tokens,
        lambda chunk: _ngram_keys(chunk, vocab_size, order, dtype),
        dtype,
        f"count {order}-grams",
        progress,
    )
    return _from_keys(keys, counts, vocab_size, order, int(tokens.shape[0]))


def from_bigram_counts(counts: BigramCounts) -> NgramCounts:
    """The bigram table as an order-2 NgramCounts (the start context row included)."""
    starts = np.flatnonzero(np.concatenate(([True], counts.prev[1:] != counts.prev[:-1])))
    starts = starts[: counts.prev.size]  # no rows for an empty table
    return NgramCounts(
        order=2,
        vocab_size=counts.vocab_size,
        context=counts.prev[starts].astype(np.uint32).reshape(-1, 1),
        crow=np.append(starts, counts.prev.size).astype(np.int64),
        next=counts.next.astype(np.uint32, copy=False),
        count=counts.count.astype(np.uint64, copy=False),
        n_sequences=counts.n_sequences,
    )


def unigram_counts(counts: BigramCounts) -> NgramCounts:
    """The unigram counts of a bigram table as an order-1 NgramCounts (one empty context)."""
    seen = np.flatnonzero(counts.unigram)
    return NgramCounts(
        order=1,
        vocab_size=counts.vocab_size,
        context=np.empty((1, 0), dtype=np.uint32),
        crow=np.array([0, seen.size], dtype=np.int64),
        next=seen.astype(np.uint32),
        count=counts.unigram[seen].astype(np.uint64),
        n_sequences=counts.n_sequences,
    )


# ------------------------------------------------------------------------------ context lookup


def pack_input_contexts(input_ids: torch.Tensor, vocab_size: int, order: int) -> torch.Tensor:
    """The packed context key of every position of (B, T) ids: tokens t−n+2..t, start-padded."""
    import torch
    import torch.nn.functional as F

    ids = input_ids.to(torch.int64)
    if order == 1:
        return torch.zeros_like(ids)
    padded = F.pad(ids, (order - 2, 0), value=vocab_size)
    length = ids.shape[-1]
    bits = token_bits(vocab_size)
    keys = torch.zeros_like(ids)
    for column in range(order - 1):
        keys = (keys << bits) | padded[..., column : column + length]
    return keys


@dataclass(frozen=True)
class NgramIndex:
    """The sorted packed context keys of one table, on a device, for `rows` lookups."""

    order: int
    vocab_size: int
    keys: torch.Tensor  # (K,) int64, sorted

    @classmethod
    def of(cls, counts: NgramCounts) -> NgramIndex:
        import torch

        return cls(counts.order, counts.vocab_size, torch.from_numpy(counts.context_keys))

    def to(self, device: torch.device | str) -> NgramIndex:
        return NgramIndex(self.order, self.vocab_size, self.keys.to(device))

    def rows(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The table row of each position's context (shape of `input_ids`), −1 if never seen."""
        import torch

        query = pack_input_contexts(input_ids.to(self.keys.device), self.vocab_size, self.order)
        if self.keys.numel() == 0:
            return torch.full_like(query, -1)
        where = torch.searchsorted(self.keys, query)
        clipped = where.clamp(max=self.keys.numel() - 1)
        return torch.where(self.keys[clipped] == query, clipped, torch.full_like(clipped, -1))


def context_rows(counts: NgramCounts, input_ids: torch.Tensor) -> torch.Tensor:
    """The row of each position's context in `counts` (int64, shape of `input_ids`), −1 where
    that context was never seen; on `input_ids`' device."""
    return NgramIndex.of(counts).to(input_ids.device).rows(input_ids)


# ------------------------------------------------------------------------------- files


def ngram_file_names(order: int) -> tuple[str, str]:
    """The Parquet and JSON file names of an order-n table (n >= 3), as artifacts.py names them."""
    return (
        Path(NGRAM_STATS.path).name.format(order=order),
        Path(NGRAM_META.path).name.format(order=order),
    )


def write_ngram_files(
    counts: NgramCounts, table_path: Path, meta_path: Path, extra_meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write one table and its JSON to the given paths atomically; returns the JSON."""
    schema = ngram_schema(counts.order)
    repeated = np.repeat(counts.context, np.diff(counts.crow), axis=0)
    columns = [pa.array(repeated[:, i], pa.uint32()) for i in range(counts.order - 1)]
    columns += [pa.array(counts.next, pa.uint32()), pa.array(counts.count, pa.uint64())]
    table = pa.Table.from_arrays(columns, schema=schema)
    meta = {
        "order": counts.order,
        "vocab_size": counts.vocab_size,
        "start_context_id": counts.vocab_size,
        "n_sequences": counts.n_sequences,
        "n_contexts": counts.n_contexts,
        "n_entries": int(counts.count.size),
        "n_tokens": int(counts.count.sum()),
        **(extra_meta or {}),
    }
    with atomic_outputs(table_path, meta_path) as (table_tmp, meta_tmp):
        write_parquet(table, table_tmp, row_group_size=1 << 20)
        write_json(meta, meta_tmp)
    return meta


def read_ngram_counts(path: Path | str) -> NgramCounts:
    """Read a table written by `write_ngram_files` (its JSON is the .json beside it)."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    meta = read_json(meta_path)
    order = int(meta["order"])
    names = ngram_schema(order).names
    table = read_parquet(path, columns=names)
    vocab_size = int(meta["vocab_size"])
    contexts = (
        np.stack([table.column(name).to_numpy() for name in names[:-2]], axis=1).astype(np.uint32)
        if order > 1
        else np.empty((table.num_rows, 0), dtype=np.uint32)
    )
    nxt = table.column("next").to_numpy().astype(np.uint32)
    count = table.column("count").to_numpy().astype(np.uint64)
    if nxt.size and int(nxt.max()) >= vocab_size:
        raise ArtifactError(f"{path}: a next token is outside the vocabulary of {vocab_size}")
    if order == 1:
        starts = np.zeros(1, dtype=np.int64)
    else:
        change = np.ones(nxt.size, dtype=bool)
        change[1:] = (contexts[1:] != contexts[:-1]).any(axis=1)
        starts = np.flatnonzero(change)
    counts = NgramCounts(
        order=order,
        vocab_size=vocab_size,
        context=contexts[starts],
        crow=np.append(starts, nxt.size).astype(np.int64),
        next=nxt,
        count=count,
        n_sequences=int(meta["n_sequences"]),
    )
    if counts.n_contexts != int(meta["n_contexts"]) or nxt.size != int(meta["n_entries"]):
        raise ArtifactError(
            f"{path}: contexts/entries disagree with {meta_path}; rerun ngram_stats"
        )
    keys = counts.context_keys
    if keys.size > 1 and not (keys[1:] > keys[:-1]).all():
        raise ArtifactError(f"{path}: contexts are not sorted; rerun the ngram_stats stage")
    return counts


# ------------------------------------------------------------------------------- the stage


def run_stage(
    cfg: Config,
    *,
    tokens_train: Path,
    tokens_meta: Path,
    bigram_stats: Path,
    ngram_stats: Path,
    ngram_meta: Path,
    order: int,
) -> None:
    """The ngram_stats stage: count the order-n table (n >= 3) of the train sequences, the ones
    the in-memory bigram_stats stage counts (`bigram_stats` supplies and checks the vocabulary)."""
    if order < 3:
        raise UserError(f"ngram-stats: order {order}; orders 1 and 2 come from bigram_stats")
    if cfg.data.bigram_tokens is not None:
        raise UserError(
            "ngram-stats: data.bigram_tokens streams the bigram counts from the corpus, which "
            "n-gram counting does not do yet; unset data.bigram_tokens for n-gram targets"
        )
    bigram_meta = read_json(Path(bigram_stats) / BIGRAM_STATS.files[2])
    token_facts = read_json(tokens_meta)
    vocab_size = int(bigram_meta["vocab_size"])
    if int(token_facts["vocab_size"]) != vocab_size:
        raise ArtifactError(
            f"{tokens_meta}: vocabulary {token_facts['vocab_size']}, bigram statistics "
            f"{vocab_size}; rerun the bigram_stats stage"
        )
    tokens = read_sequences(tokens_train)
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise ArtifactError(
            f"{tokens_train}: token id {int(tokens.max())} is outside the vocabulary of "
            f"{vocab_size}; rerun the tokenize stage"
        )
    try:
        counts = count_ngrams(tokens, vocab_size, order, progress=True)
    except ValueError as error:
        raise UserError(f"ngram-stats: {error}") from None
    meta = write_ngram_files(
        counts,
        Path(ngram_stats),
        Path(ngram_meta),
        {"seq_len": int(tokens.shape[1]), "tokens_sha256": sha256_file(tokens_train)},
    )
    log.info(
        "%d-grams: %d entries over %d contexts (%d sequences) -> %s",
        order,
        meta["n_entries"],
        meta["n_contexts"],
        meta["n_sequences"],
        ngram_stats,
    )


# ------------------------------------------------------------------------------- surprisal


def check_chain(tables: list[NgramCounts]) -> None:
    """Tables must be orders 1, 2, .., n of one vocabulary; ValueError otherwise."""
    if not tables:
        raise ValueError("no n-gram tables; pass orders 1..n")
    orders = [t.order for t in tables]
    if orders != list(range(1, len(tables) + 1)):
        raise ValueError(f"n-gram tables must be orders 1..n in order, got {orders}")
    if len({t.vocab_size for t in tables}) != 1:
        raise ValueError("n-gram tables of different vocabularies")


def ngram_surprisal(
    tables: list[NgramCounts], sequences: np.ndarray, backoff: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Surprisal (bits) of the order-n model (n = len(tables)) for the next token at positions
    0..T-2, shape (n_seq, T-1), inf where P = 0, and whether each context was seen in train.

    P is unsmoothed. A context never seen backs off, without `backoff`, to the unigram
    distribution (as `bigram_surprisal`; for n = 2 both give the same numbers); with `backoff`, to
    the longest suffix context that was seen (n − 1 tokens, then n − 2, .., the unigram), as a
    back-off n-gram model does. The first positions' contexts are start-padded as in counting."""
    import torch

    check_chain(tables)
    sequences = np.asarray(sequences)
    current = torch.from_numpy(sequences[:, :-1].astype(np.int64))
    nxt = sequences[:, 1:].astype(np.int64)
    order = len(tables)
    prob = tables[0].probability(np.zeros(nxt.shape, dtype=np.int64), nxt)
    seen = np.ones(nxt.shape, dtype=bool)
    for table in tables[1:] if backoff else tables[1:][-1:]:
        rows = context_rows(table, current).numpy()
        found = rows >= 0
        prob = np.where(found, table.probability(rows, nxt), prob)
        if table.order == order:
            seen = found
    with np.errstate(divide="ignore"):
        bits = -np.log2(prob)
    return bits.reshape(sequences.shape[0], -1), seen.reshape(sequences.shape[0], -1)
