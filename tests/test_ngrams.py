"""N-gram counting, lookup, files and surprisal equal plain-Python references; order 2 is the
bigram path exactly."""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bigram_subnetworks.analysis.scoring import bigram_surprisal
from bigram_subnetworks.artifacts import NGRAM_ORDERS, TOKEN_SCHEMA, ngram_order
from bigram_subnetworks.config import Config, validate_config
from bigram_subnetworks.data import bigrams as bigrams_module
from bigram_subnetworks.data.bigrams import count_bigrams, write_bigram_stats
from bigram_subnetworks.data.ngrams import (
    NgramCounts,
    context_rows,
    count_ngrams,
    from_bigram_counts,
    ngram_file_names,
    ngram_surprisal,
    read_ngram_counts,
    run_stage,
    unigram_counts,
    write_ngram_files,
)
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import read_json, write_json, write_parquet


def contexts_of(seq: list[int], vocab: int, order: int) -> list[tuple[int, ...]]:
    """The start-padded context of every position's next token (the slow reference's rule)."""
    padded = [vocab] * (order - 1) + seq
    return [tuple(padded[t : t + order - 1]) for t in range(len(seq))]


def reference_ngrams(tokens: np.ndarray, vocab: int, order: int) -> Counter[tuple[int, ...]]:
    """(context..., next) counts by a dict, one sequence and one position at a time."""
    found: Counter[tuple[int, ...]] = Counter()
    for seq in tokens.tolist():
        for context, token in zip(contexts_of(seq, vocab, order), seq, strict=True):
            found[(*context, token)] += 1
    return found


def as_counter(counts: NgramCounts) -> Counter[tuple[int, ...]]:
    found: Counter[tuple[int, ...]] = Counter()
    for row, context in enumerate(counts.context.tolist()):
        for entry in range(counts.crow[row], counts.crow[row + 1]):
            found[(*context, int(counts.next[entry]))] = int(counts.count[entry])
    return found


def check_layout(counts: NgramCounts) -> None:
    """Unique sorted contexts, non-empty rows (but order 1's), next sorted within a row."""
    assert counts.context.dtype == np.uint32 and counts.next.dtype == np.uint32
    assert counts.count.dtype == np.uint64 and counts.crow.dtype == np.int64
    assert counts.context.shape[1] == counts.order - 1
    assert counts.crow[0] == 0 and counts.crow[-1] == counts.next.size
    rows = [tuple(r) for r in counts.context.tolist()]
    assert rows == sorted(set(rows))
    for row in range(counts.n_contexts):
        nxt = counts.next[counts.crow[row] : counts.crow[row + 1]].tolist()
        assert nxt == sorted(set(nxt)) and (nxt or counts.order == 1)


corpora = st.tuples(
    st.integers(1, 9),  # vocab
    st.integers(1, 6),  # sequences
    st.integers(1, 9),  # positions
    st.integers(0, 2**31),
)


def draw(vocab: int, n_seq: int, seq_len: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (n_seq, seq_len)).astype(np.uint32)


@settings(max_examples=60, deadline=None)
@given(corpora, st.integers(1, 4), st.booleans())
def test_counts_equal_a_dict_count(corpus: tuple, order: int, chunked: bool) -> None:
    vocab, n_seq, seq_len, seed = corpus
    tokens = draw(vocab, n_seq, seq_len, seed)
    with pytest.MonkeyPatch.context() as patch:
        if chunked:  # one sequence per chunk: the merge path
            patch.setattr(bigrams_module, "CHUNK_TOKENS", 1)
        counts = count_ngrams(tokens, vocab, order)
    check_layout(counts)
    assert as_counter(counts) == reference_ngrams(tokens, vocab, order)
    assert counts.n_sequences == n_seq and counts.vocab_size == vocab and counts.order == order


@settings(max_examples=40, deadline=None)
@given(corpora)
def test_orders_one_and_two_are_the_bigram_tables(corpus: tuple) -> None:
    vocab, n_seq, seq_len, seed = corpus
    tokens = draw(vocab, n_seq, seq_len, seed)
    bigrams = count_bigrams(tokens, vocab)
    for mine, theirs in (
        (count_ngrams(tokens, vocab, 2), from_bigram_counts(bigrams)),
        (count_ngrams(tokens, vocab, 1), unigram_counts(bigrams)),
    ):
        for field in ("context", "crow", "next", "count"):
            assert np.array_equal(getattr(mine, field), getattr(theirs, field)), field
            assert getattr(mine, field).dtype == getattr(theirs, field).dtype
    two = count_ngrams(tokens, vocab, 2)
    assert np.array_equal(
        two.context[:, 0][np.repeat(np.arange(two.n_contexts), np.diff(two.crow))], bigrams.prev
    )


def test_keys_that_do_not_fit_are_refused() -> None:
    tokens = np.zeros((1, 3), dtype=np.uint32)
    assert count_ngrams(tokens, 2**16 - 1, 4).order == 4  # 16 bits a token: 64 bits fit
    with pytest.raises(ValueError, match="need 68 bits"):
        count_ngrams(tokens, 2**16, 4)
    with pytest.raises(ValueError, match="token ids must lie"):
        count_ngrams(np.full((1, 2), 5, dtype=np.uint32), 5, 3)


@settings(max_examples=30, deadline=None)
@given(corpora, st.integers(1, 4))
def test_parquet_round_trip(
    tmp_path_factory: pytest.TempPathFactory, corpus: tuple, order: int
) -> None:
    vocab, n_seq, seq_len, seed = corpus
    counts = count_ngrams(draw(vocab, n_seq, seq_len, seed), vocab, order)
    folder = tmp_path_factory.mktemp("ngrams")
    table, meta_name = ngram_file_names(order)
    meta = write_ngram_files(counts, folder / table, folder / meta_name)
    assert meta["n_entries"] == counts.next.size and meta["start_context_id"] == vocab
    back = read_ngram_counts(folder / table)
    assert (folder / meta_name).exists()
    for field in ("context", "crow", "next", "count"):
        assert np.array_equal(getattr(back, field), getattr(counts, field)), field
    assert (back.order, back.vocab_size, back.n_sequences) == (order, vocab, n_seq)


def test_a_targets_tables_are_the_back_off_chain_of_its_order() -> None:
    from bigram_subnetworks.masks.train import target_tables

    tokens = draw(7, 5, 12, 3)
    bigrams = count_bigrams(tokens, 7)
    tables = target_tables("trigram", bigrams, [count_ngrams(tokens, 7, 3)])
    assert [t.order for t in tables] == [1, 2, 3]
    for table in tables:
        assert as_counter(table) == reference_ngrams(tokens, 7, table.order)
    assert [t.order for t in target_tables("unigram", bigrams, [])] == [1]
    with pytest.raises(UserError, match="--ngram-stats"):
        target_tables("trigram", bigrams, [])
    with pytest.raises(UserError, match="another vocabulary"):
        target_tables("trigram", bigrams, [count_ngrams(tokens, 8, 3)])


@settings(max_examples=40, deadline=None)
@given(corpora, st.integers(1, 4))
def test_context_rows_equal_a_python_lookup(corpus: tuple, order: int) -> None:
    vocab, n_seq, seq_len, seed = corpus
    counts = count_ngrams(draw(vocab, n_seq, seq_len, seed), vocab, order)
    queries = draw(vocab, 3, seq_len + 2, seed + 1)
    rows = context_rows(counts, torch.from_numpy(queries.astype(np.int64)))
    assert rows.dtype == torch.int64 and rows.shape == queries.shape
    where = {tuple(c): i for i, c in enumerate(counts.context.tolist())}
    for b, seq in enumerate(queries.tolist()):
        for t in range(len(seq)):
            context = tuple(([vocab] * (order - 1) + seq)[t + 1 : t + order])
            assert int(rows[b, t]) == where.get(context, -1)


def reference_surprisal(
    tokens: np.ndarray, vocab: int, order: int, sequences: np.ndarray, backoff: bool
) -> tuple[list[list[float]], list[list[bool]]]:
    """A slow n-gram model from dict counts: bits of every next token, and seen contexts."""
    tables = {n: reference_ngrams(tokens, vocab, n) for n in range(1, order + 1)}
    totals: dict[int, Counter[tuple[int, ...]]] = {n: Counter() for n in range(1, order + 1)}
    for n, table in tables.items():
        for key, value in table.items():
            totals[n][key[:-1]] += value
    bits, seen = [], []
    for seq in sequences.tolist():
        row_bits, row_seen = [], []
        for t in range(len(seq) - 1):
            history = [vocab] * order + seq[: t + 1]
            longest = tuple(history[len(history) - (order - 1) :]) if order > 1 else ()
            row_seen.append(order == 1 or totals[order][longest] > 0)
            use = 1
            for n in range(2, order + 1) if backoff else [order] if order > 1 else []:
                context = tuple(history[len(history) - (n - 1) :])
                if totals[n][context] > 0:
                    use = n
            context = tuple(history[len(history) - (use - 1) :]) if use > 1 else ()
            total = totals[use][context]
            p = tables[use][(*context, seq[t + 1])] / total if total else 0.0
            row_bits.append(-math.log2(p) if p > 0 else math.inf)
        bits.append(row_bits)
        seen.append(row_seen)
    return bits, seen


@settings(max_examples=40, deadline=None)
@given(corpora, st.integers(1, 4), st.booleans())
def test_surprisal_equals_a_slow_ngram_model(corpus: tuple, order: int, backoff: bool) -> None:
    vocab, n_seq, seq_len, seed = corpus
    tokens = draw(vocab, n_seq, max(seq_len, 2), seed)
    sequences = draw(vocab, 3, 6, seed + 1)
    tables = [count_ngrams(tokens, vocab, n) for n in range(1, order + 1)]
    bits, seen = ngram_surprisal(tables, sequences, backoff)
    want_bits, want_seen = reference_surprisal(tokens, vocab, order, sequences, backoff)
    assert bits.shape == (3, 5) and seen.dtype == bool
    np.testing.assert_allclose(bits, np.array(want_bits), rtol=1e-12)
    assert seen.tolist() == want_seen


@settings(max_examples=40, deadline=None)
@given(corpora, st.booleans())
def test_order_two_surprisal_is_bigram_surprisal(corpus: tuple, backoff: bool) -> None:
    vocab, n_seq, seq_len, seed = corpus
    tokens = draw(vocab, n_seq, max(seq_len, 2), seed)
    sequences = draw(vocab, 4, 7, seed + 1)
    bigrams = count_bigrams(tokens, vocab)
    bits, _ = ngram_surprisal(
        [unigram_counts(bigrams), from_bigram_counts(bigrams)], sequences, backoff
    )
    assert np.array_equal(bits, bigram_surprisal(bigrams, sequences))


def test_target_orders() -> None:
    assert NGRAM_ORDERS == {"unigram": 1, "bigram": 2, "trigram": 3}
    assert ngram_order("full") is None and ngram_order("trigram") == 3
    with pytest.raises(ValueError, match="unknown mask target"):
        ngram_order("fourgram")


def stage_config(bigram_tokens: int | None = None) -> Config:
    data: dict = {"seq_len": 10, **({"bigram_tokens": bigram_tokens} if bigram_tokens else {})}
    raw = {
        "run": "ngrams",
        "corpus": {"name": "words", "source": "local", "path": "texts"},
        "tokenizer": {"name": "bpe", "source": "train", "vocab_size": 300},
        "data": data,
    }
    return validate_config(raw)


def test_stage_writes_the_table(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tokens = draw(6, 4, 10, 9)
    rows = pa.array([list(r) for r in tokens.tolist()], pa.list_(pa.uint32()))
    seq_ids = pa.array(np.arange(4, dtype=np.uint32))
    write_parquet(
        pa.Table.from_arrays([seq_ids, rows], schema=TOKEN_SCHEMA),
        tmp_path / "tokens_train.parquet",
    )
    write_json({"vocab_size": 6}, tmp_path / "tokens.json")
    write_bigram_stats(count_bigrams(tokens, 6), tmp_path)
    paths = {
        "tokens_train": tmp_path / "tokens_train.parquet",
        "tokens_meta": tmp_path / "tokens.json",
        "bigram_stats": tmp_path,
        "ngram_stats": tmp_path / "ngrams-3.parquet",
        "ngram_meta": tmp_path / "ngrams-3.json",
    }
    with caplog.at_level(logging.INFO):
        run_stage(stage_config(), **paths, order=3)
    assert "ngrams-3.parquet" in caplog.text
    written = read_ngram_counts(tmp_path / "ngrams-3.parquet")
    assert as_counter(written) == reference_ngrams(tokens, 6, 3)
    assert read_json(tmp_path / "ngrams-3.json")["tokens_sha256"]
    with pytest.raises(UserError, match="orders 1 and 2"):
        run_stage(stage_config(), **paths, order=2)
    with pytest.raises(UserError, match=r"data\.bigram_tokens"):
        run_stage(stage_config(bigram_tokens=100), **paths, order=3)
    with pytest.raises(UserError, match="need 68 bits"):
        write_json({"vocab_size": 2**16}, tmp_path / "tokens.json")
        write_bigram_stats(count_bigrams(tokens, 2**16), tmp_path)
        run_stage(stage_config(), **paths, order=4)
