"""Bigram statistics streamed from the corpus source (data.bigram_tokens), at the paper's scale.

The train documents are read one at a time from the source (`corpus.iter_documents`, the eval
split's documents left out), encoded in batches by the tokenizer's own threads (the next batch is
encoded while this one is counted) and counted as the in-memory path counts them: documents
joined with the end-of-text id into one stream, cut into sequences of seq_len, the first token of
every sequence after the start context (id = vocab size). `SequenceCounter` keeps the position in
that stream, so pieces of any length give exactly `count_bigrams(cut_sequences(stream))`.

Memory is bounded by the bigram table (12 bytes a pair type below 2^32 tokens, with packed
uint32 keys below 65,535 ids; about twice that while a shard is merged in, plus one shard's keys
and one document), not the corpus:
each shard of about `SHARD_TOKENS` tokens is sorted and run-length counted, written to the stage's
saved state (`.bigram_stats.state/` beside the outputs) and merged into the running table. An
interrupted run resumes after its last complete shard; the documents of the shards done are read
again, not encoded, and their text must hash as before, else the state is stale and the count
starts over.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from bigram_subnetworks.data.bigrams import (
    count_sorted_keys,
    counts_from_keys,
    key_dtype,
    write_bigram_stats,
)
from bigram_subnetworks.data.corpus import Document
from bigram_subnetworks.data.tokenizer import LoadedTokenizer
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import (
    atomic_outputs,
    read_json,
    read_parquet,
    write_json,
    write_parquet,
)

log = logging.getLogger(__name__)

SHARD_TOKENS = 1 << 25  # ~33.5M tokens (about a minute of encoding on 2 cores) per saved shard
BATCH_CHARACTERS = 1 << 22  # ~4 MB of text per encode_batch call: enough work for every thread
STATE_DIR = ".bigram_stats.state"
STATE_VERSION = 1


class BigramTokensError(UserError):
    """The train documents hold fewer tokens than data.bigram_tokens asks for."""


# ------------------------------------------------------------------------------- counting


class SequenceCounter:
    """Bigram keys of a token stream cut into seq_len sequences, fed in pieces of any length.

    Counts the first `limit` tokens (a whole number of sequences) and ignores the rest. `position`
    and `last` (the token before it) resume a stream partly counted already."""

    def __init__(
        self, vocab_size: int, seq_len: int, limit: int, position: int = 0, last: int = 0
    ) -> None:
        if seq_len < 1 or limit % seq_len or not 0 <= position <= limit:
            raise ValueError(f"bad stream: seq_len {seq_len}, limit {limit}, position {position}")
        self.vocab_size, self.seq_len, self.limit = vocab_size, seq_len, limit
        self.position, self.last = position, last
        self.dtype = key_dtype(vocab_size)
        self._keys: list[np.ndarray] = []

    @property
    def full(self) -> bool:
        return self.position >= self.limit

    @property
    def pending(self) -> int:
        """Tokens added since the last `take`."""
        return sum(k.size for k in self._keys)

    def add(self, tokens: np.ndarray) -> int:
        """Count the next tokens of the stream; returns how many were taken (fewer at the limit)."""
        tokens = tokens[: self.limit - self.position]
        n = tokens.size
        if n == 0:
            return 0
        if int(tokens.max()) >= self.vocab_size:
            raise ValueError(f"token id {int(tokens.max())} outside vocabulary {self.vocab_size}")
        prev = np.empty(n, dtype=self.dtype)
        prev[0] = self.last
        prev[1:] = tokens[:-1]
        prev[(-self.position) % self.seq_len :: self.seq_len] = self.vocab_size  # sequence starts
        self._keys.append(prev * self.dtype(self.vocab_size) + tokens.astype(self.dtype))
        self.position += n
        self.last = int(tokens[-1])
        return n

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sorted unique keys, their counts, unigram counts) added since the last take."""
        if self._keys:
            keys = np.concatenate(self._keys)
            self._keys = []
            keys.sort()  # in place: one shard's keys in memory once
            keys, counts = count_sorted_keys(keys)
        else:
            keys, counts = np.empty(0, dtype=self.dtype), np.empty(0, dtype=np.uint64)
        # Every counted token is the next token of one pair: unigrams from the pairs, exactly
        # (float64 holds integers to 2^53), once a shard rather than once a document.
        nxt = keys % self.dtype(self.vocab_size)
        unigram = np.bincount(nxt, weights=counts, minlength=self.vocab_size)
        return keys, counts, unigram.astype(np.uint64)


def merge_sorted_counts(
    keys: np.ndarray, counts: np.ndarray, more_keys: np.ndarray, more_counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The sum of two tables of sorted unique keys, without a re-sort: the new table, the old
    one and two bytes per row at once, plus temporaries the size of the smaller table. `counts`
    is updated in place for the keys both hold."""
    where = np.searchsorted(keys, more_keys)
    found = where < keys.size
    found[found] = keys[where[found]] == more_keys[found]
    counts[where[found]] += more_counts[found]
    new = np.flatnonzero(~found)
    if new.size == 0:
        return keys, counts
    slots = where[new] + np.arange(new.size)  # where the new keys land in the merged table
    del where, found
    is_new = np.zeros(keys.size + new.size, dtype=bool)
    is_new[slots] = True
    merged_keys = np.empty(is_new.size, dtype=keys.dtype)
    merged_counts = np.empty(is_new.size, dtype=counts.dtype)
    merged_keys[slots] = more_keys[new]
    merged_counts[slots] = more_counts[new]
    np.logical_not(is_new, out=is_new)
    merged_keys[is_new] = keys
    merged_counts[is_new] = counts
    return merged_keys, merged_counts


# ------------------------------------------------------------------------------- encoding


def text_batches(documents: Iterable[Document], characters: int) -> Iterator[list[str]]:
    """Texts in batches of about `characters` characters (at least one document each)."""
    batch: list[str] = []
    size = 0
    for document in documents:
        batch.append(document.text)
        size += len(document.text)
        if size >= characters:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def encoded_documents(
    texts: Iterable[list[str]], loaded: LoadedTokenizer
) -> Iterator[tuple[str, np.ndarray]]:
    """(text, ids + end-of-text) for each document; batch k+1 is encoded (the tokenizer's threads,
    outside the GIL) while the caller counts batch k."""
    tokenizer = loaded.tokenizer
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    batches = iter(texts)
    with ThreadPoolExecutor(max_workers=1) as pool:
        batch = next(batches, None)
        future = pool.submit(encode, batch, add_special_tokens=False) if batch else None
        while batch is not None and future is not None:
            encodings = future.result()
            following = next(batches, None)
            if following is not None:
                future = pool.submit(encode, following, add_special_tokens=False)
            for text, encoding in zip(batch, encodings, strict=True):
                ids = encoding.ids  # a new list on every access
                tokens = np.empty(len(ids) + 1, dtype=np.uint32)
                tokens[:-1] = ids
                tokens[-1] = loaded.eos_id
                yield text, tokens
            batch = following


# --------------------------------------------------------------------------- saved state


@dataclass
class Shard:
    """One counted shard: documents it read, the stream position and token after it."""

    documents: int
    position: int
    last: int
    text_sha256: str

    def file(self, state: Path, index: int) -> Path:
        return state / f"shard-{index:05d}.parquet"


@dataclass
class StreamState:
    fingerprint: dict[str, Any]
    shards: list[Shard] = field(default_factory=list)

    def save(self, folder: Path) -> None:
        payload = {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "shards": [vars(s) for s in self.shards],
        }
        with atomic_outputs(folder / "state.json") as (path,):
            write_json(payload, path)


def load_state(folder: Path, fingerprint: dict[str, Any]) -> StreamState:
    """The saved shards of the same count, or a fresh state (a stale or unreadable one is
    discarded)."""
    path = folder / "state.json"
    if path.is_file():
        try:
            saved = read_json(path)
            if saved.get("version") == STATE_VERSION and saved["fingerprint"] == fingerprint:
                return StreamState(fingerprint, [Shard(**s) for s in saved["shards"]])
            log.info("bigram state in %s is from other settings; starting over", folder)
        except (UserError, KeyError, TypeError) as error:
            log.warning("ignoring unreadable bigram state in %s (%s)", folder, error)
    shutil.rmtree(folder, ignore_errors=True)
    return StreamState(fingerprint)


def write_shard(path: Path, keys: np.ndarray, counts: np.ndarray, unigram: np.ndarray) -> None:
    table = pa.table({"key": pa.array(keys.astype(np.uint64)), "count": pa.array(counts)})
    uni = pa.table({"count": pa.array(unigram)})
    unigram_path = path.with_suffix(".unigram.parquet")
    with atomic_outputs(path, unigram_path) as (big, small):
        write_parquet(table, big, row_group_size=1 << 20)
        write_parquet(uni, small)


def read_shard(path: Path, dtype: type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = read_parquet(path, columns=["key", "count"])
    unigram = read_parquet(path.with_suffix(".unigram.parquet"), columns=["count"])
    keys = table.column("key").to_numpy().astype(dtype)
    return keys, table.column("count").to_numpy(), unigram.column("count").to_numpy()


class ShardTexts:
    """The documents of the shard being counted: how many, and the hash of their text."""

    def __init__(self) -> None:
        self.documents = 0
        self.digest = hashlib.sha256()

    def add(self, text: str) -> None:
        self.documents += 1
        self.digest.update(text.encode("utf-8"))
        self.digest.update(b"\0")


def _digest(texts: Iterable[str]) -> str:
    shard = ShardTexts()
    for text in texts:
        shard.add(text)
    return shard.digest.hexdigest()


def _resumable(documents: Iterator[Document], shards: list[Shard]) -> bool:
    """Read the documents of the saved shards again (not encoded); True when each shard's text
    hashes as it did."""
    for shard in shards:
        if _digest(d.text for d in islice(documents, shard.documents)) != shard.text_sha256:
            return False
    return True


# --------------------------------------------------------------------------------- driver


def stream_bigram_stats(
    documents: Callable[[], Iterator[Document]],
    loaded: LoadedTokenizer,
    seq_len: int,
    bigram_tokens: int,
    output_dir: Path,
    fingerprint: dict[str, Any],
    shard_tokens: int | None = None,
    batch_characters: int | None = None,
) -> dict[str, Any]:
    """Count bigrams over the first bigram_tokens tokens (whole sequences) of the documents'
    stream and write the bigram statistics; `documents()` starts the train documents afresh.
    Shards and encode batches default to SHARD_TOKENS and BATCH_CHARACTERS."""
    shard_tokens = shard_tokens or SHARD_TOKENS
    batch_characters = batch_characters or BATCH_CHARACTERS
    vocab_size = loaded.vocab_size
    limit = bigram_tokens // seq_len * seq_len
    folder = output_dir / STATE_DIR
    fingerprint = {**fingerprint, "seq_len": seq_len, "limit": limit, "shard_tokens": shard_tokens}
    state = load_state(folder, fingerprint)
    source = documents()
    if state.shards and not _resumable(source, state.shards):
        log.info("the corpus changed since the saved bigram shards; starting over")
        shutil.rmtree(folder, ignore_errors=True)
        state, source = StreamState(fingerprint), documents()
    folder.mkdir(parents=True, exist_ok=True)
    dtype = key_dtype(vocab_size)
    count_dtype = np.uint32 if limit < 2**32 else np.uint64  # no count exceeds the limit
    keys, counts = np.empty(0, dtype=dtype), np.empty(0, dtype=count_dtype)
    unigram = np.zeros(vocab_size, dtype=np.uint64)
    for index, shard in enumerate(state.shards):
        shard_keys, shard_counts, shard_unigram = read_shard(shard.file(folder, index), dtype)
        keys, counts = merge_sorted_counts(
            keys, counts, shard_keys, shard_counts.astype(count_dtype)
        )
        unigram += shard_unigram
    done = state.shards[-1] if state.shards else Shard(0, 0, 0, "")
    if state.shards:
        log.info(
            "resuming the bigram count after %d shards (%d tokens)",
            len(state.shards),
            done.position,
        )
    counter = SequenceCounter(vocab_size, seq_len, limit, done.position, done.last)
    texts = ShardTexts()

    def close_shard() -> None:
        nonlocal keys, counts, texts
        shard_keys, shard_counts, shard_unigram = counter.take()
        shard = Shard(texts.documents, counter.position, counter.last, texts.digest.hexdigest())
        write_shard(shard.file(folder, len(state.shards)), shard_keys, shard_counts, shard_unigram)
        state.shards.append(shard)
        state.save(folder)
        keys, counts = merge_sorted_counts(
            keys, counts, shard_keys, shard_counts.astype(count_dtype)
        )
        unigram[:] += shard_unigram
        texts = ShardTexts()

    with tqdm(total=limit, initial=counter.position, desc="count bigrams", unit="tok") as bar:
        for text, ids in encoded_documents(text_batches(source, batch_characters), loaded):
            if counter.full:
                break
            texts.add(text)
            bar.update(counter.add(ids))
            if counter.pending >= shard_tokens or counter.full:
                close_shard()
        if texts.documents:  # the documents ran out before a shard filled
            close_shard()
    if not counter.full:
        raise BigramTokensError(
            f"data.bigram_tokens: the train documents hold {counter.position:,} tokens, fewer "
            f"than {limit:,} ({limit // seq_len:,} sequences of {seq_len}); lower "
            "data.bigram_tokens or add text"
        )
    n_documents = sum(s.documents for s in state.shards)
    result = counts_from_keys(keys, counts, unigram, vocab_size, limit // seq_len)
    del keys, counts  # the table is held once, as (prev, next, count)
    meta = write_bigram_stats(
        result,
        output_dir,
        {
            "seq_len": seq_len,
            "counted_over": "documents streamed from the corpus source (data.bigram_tokens)",
            "bigram_tokens": bigram_tokens,
            "documents": n_documents,
            "shards": len(state.shards),
            "text_sha256": _digest(s.text_sha256 for s in state.shards),
            **{k: v for k, v in fingerprint.items() if k.endswith("sha256")},
        },
    )
    shutil.rmtree(folder, ignore_errors=True)
    log.info(
        "bigrams: %d types over %d tokens (%d sequences, %d documents streamed) -> %s",
        meta["n_bigram_types"],
        meta["n_tokens"],
        meta["n_sequences"],
        n_documents,
        output_dir,
    )
    return meta


def train_documents(
    all_documents: Callable[[], Iterator[Document]], eval_ids: set[str]
) -> Callable[[], Iterator[Document]]:
    """A fresh iterator over the source's documents minus the eval split's, on every call."""
    return lambda: (d for d in all_documents() if d.doc_id not in eval_ids)
