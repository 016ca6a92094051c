"""Vectorised bigram counting equals a plain-Python dict count, on every key and chunking path."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bigram_subnetworks.data import bigrams
from bigram_subnetworks.data.bigrams import (
    BigramCounts,
    build_bigram_stats,
    count_bigrams,
    read_bigram_counts,
    write_bigram_stats,
)
from bigram_subnetworks.data.tokenize import cut_sequences, token_stream
from bigram_subnetworks.data.tokenizer import LoadedTokenizer


def reference_bigrams(tokens: np.ndarray, vocab_size: int) -> Counter[tuple[int, int]]:
    """The slow reference: (start context, first token), then every (previous, next) pair."""
    pairs: Counter[tuple[int, int]] = Counter()
    for seq in tokens.tolist():
        pairs[(vocab_size, seq[0])] += 1
        for i in range(1, len(seq)):
            pairs[(seq[i - 1], seq[i])] += 1
    return pairs


def reference_unigrams(tokens: np.ndarray, vocab_size: int) -> list[int]:
    counts = [0] * vocab_size
    for token in tokens.ravel().tolist():
        counts[token] += 1
    return counts


def as_dict(counts: BigramCounts) -> dict[tuple[int, int], int]:
    return {
        (int(p), int(n)): int(c)
        for p, n, c in zip(counts.prev, counts.next, counts.count, strict=True)
    }


def assert_matches_reference(counts: BigramCounts, tokens: np.ndarray, vocab_size: int) -> None:
    assert counts.prev.dtype == np.uint32 and counts.next.dtype == np.uint32
    assert counts.count.dtype == np.uint64 and counts.unigram.dtype == np.uint64
    assert as_dict(counts) == dict(reference_bigrams(tokens, vocab_size))
    # One row per pair type, sorted by (prev, next), no zero counts.
    keys = list(zip(counts.prev.tolist(), counts.next.tolist(), strict=True))
    assert keys == sorted(set(keys))
    assert (counts.count > 0).all()
    assert counts.unigram.tolist() == reference_unigrams(tokens, vocab_size)
    assert counts.vocab_size == vocab_size
    assert counts.n_sequences == tokens.shape[0]
    assert counts.n_tokens == tokens.size
    assert int(counts.count.sum()) == tokens.size
    assert int(counts.count[counts.prev == vocab_size].sum()) == tokens.shape[0]
    assert (counts.next < vocab_size).all() and (counts.prev <= vocab_size).all()


@st.composite
def token_arrays(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    vocab_size = draw(st.integers(1, 300))
    n_sequences = draw(st.integers(1, 20))
    seq_len = draw(st.integers(1, 40))
    dtype = draw(st.sampled_from([np.uint32, np.int64, np.uint16]))
    ids = draw(
        st.lists(
            st.integers(0, vocab_size - 1),
            min_size=n_sequences * seq_len,
            max_size=n_sequences * seq_len,
        )
    )
    return np.array(ids, dtype=dtype).reshape(n_sequences, seq_len), vocab_size


@settings(max_examples=150, deadline=None)
@given(data=token_arrays(), chunk_tokens=st.sampled_from([bigrams.CHUNK_TOKENS, 1, 5, 37]))
def test_counts_equal_reference_on_random_tokens(
    data: tuple[np.ndarray, int], chunk_tokens: int
) -> None:
    tokens, vocab_size = data
    with mock.patch.object(bigrams, "CHUNK_TOKENS", chunk_tokens):
        counts = count_bigrams(tokens, vocab_size)
    assert_matches_reference(counts, tokens, vocab_size)


def test_counts_equal_reference_on_real_tokens(
    sotu_texts: list[str], loaded_bpe: LoadedTokenizer
) -> None:
    stream = token_stream(sotu_texts, loaded_bpe)
    tokens = cut_sequences(stream, 64)
    assert tokens.shape[0] > 100
    counts = count_bigrams(tokens, loaded_bpe.vocab_size)
    assert_matches_reference(counts, tokens, loaded_bpe.vocab_size)
    # Real text reuses pairs: far fewer types than tokens.
    assert counts.count.size < tokens.size // 2


@pytest.mark.parametrize("vocab_size", [65_535, 65_536, 70_000])
def test_wide_keys_near_and_past_uint32(vocab_size: int) -> None:
    """Keys prev * V + next pass 2**32 from V = 65_536 on; the largest ids must survive."""
    rng = np.random.default_rng(vocab_size)
    high = np.arange(vocab_size - 50, vocab_size, dtype=np.uint32)
    tokens = np.concatenate(
        [
            rng.choice(high, size=(30, 12)),
            rng.integers(0, vocab_size, size=(30, 12), dtype=np.uint32),
            np.full((2, 12), vocab_size - 1, dtype=np.uint32),
        ]
    )
    counts = count_bigrams(tokens, vocab_size)
    assert_matches_reference(counts, tokens, vocab_size)
    assert as_dict(counts)[(vocab_size, vocab_size - 1)] >= 2
    assert as_dict(counts)[(vocab_size - 1, vocab_size - 1)] >= 22


def test_chunks_are_merged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bigrams, "CHUNK_TOKENS", 10)
    merge = mock.Mock(wraps=bigrams._merge_counts)
    monkeypatch.setattr(bigrams, "_merge_counts", merge)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 7, size=(25, 4), dtype=np.uint32)  # 2 rows per chunk: 13 chunks
    counts = count_bigrams(tokens, 7)
    assert merge.call_count == 1
    assert len(merge.call_args.args[0]) == 13
    assert_matches_reference(counts, tokens, 7)


def test_single_position_sequences_count_only_start_pairs() -> None:
    tokens = np.array([[3], [1], [3]], dtype=np.uint32)
    counts = count_bigrams(tokens, 5)
    assert as_dict(counts) == {(5, 1): 1, (5, 3): 2}


@pytest.mark.parametrize(
    "tokens",
    [
        np.array([[0, 1, 5]], dtype=np.uint32),  # == vocab_size
        np.array([[0, 99]], dtype=np.int64),
        np.array([[0, -1]], dtype=np.int64),
    ],
)
def test_ids_out_of_range_raise(tokens: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        count_bigrams(tokens, 5)


@pytest.mark.parametrize("shape", [(6,), (2, 0), (1, 2, 3)])
def test_wrong_shape_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="2-D"):
        count_bigrams(np.zeros(shape, dtype=np.uint32), 5)


def test_write_read_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 50, size=(9, 17), dtype=np.uint32)
    counts = count_bigrams(tokens, 50)
    meta = write_bigram_stats(counts, tmp_path / "out", {"seq_len": 17})

    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "bigrams.json",
        "bigrams.parquet",
        "unigrams.parquet",
    ]
    schema = pq.read_schema(tmp_path / "out" / "bigrams.parquet")
    assert schema.names == ["prev", "next", "count"]
    assert [schema.field(n).type for n in schema.names] == [pa.uint32(), pa.uint32(), pa.uint64()]
    uni = pq.read_table(tmp_path / "out" / "unigrams.parquet")
    assert uni.schema.names == ["token", "count"]
    assert uni.column("token").to_pylist() == list(range(50))
    assert uni.column("count").type == pa.uint64()

    on_disk = json.loads((tmp_path / "out" / "bigrams.json").read_text())
    assert on_disk == meta
    assert on_disk["vocab_size"] == 50
    assert on_disk["start_context_id"] == 50
    assert on_disk["n_tokens"] == 9 * 17
    assert on_disk["n_sequences"] == 9
    assert on_disk["n_bigram_types"] == len(reference_bigrams(tokens, 50))
    assert on_disk["seq_len"] == 17

    back = read_bigram_counts(tmp_path / "out")
    for name in ("prev", "next", "count", "unigram"):
        assert np.array_equal(getattr(back, name), getattr(counts, name)), name
        assert getattr(back, name).dtype == getattr(counts, name).dtype, name
    assert (back.vocab_size, back.n_sequences) == (50, 9)


def test_build_bigram_stats_from_tokens_file(
    tmp_path: Path, sotu_texts: list[str], loaded_bpe: LoadedTokenizer
) -> None:
    from bigram_subnetworks.data.tokenize import sequences_table
    from bigram_subnetworks.io import write_json, write_parquet

    tokens = cut_sequences(token_stream(sotu_texts[:2], loaded_bpe), 32)
    write_parquet(
        sequences_table(tokens, np.arange(len(tokens))), tmp_path / "tokens_train.parquet"
    )
    write_json({"vocab_size": loaded_bpe.vocab_size}, tmp_path / "tokens.json")
    meta = build_bigram_stats(tmp_path / "tokens_train.parquet", tmp_path / "stats")
    assert meta["seq_len"] == 32 and meta["n_tokens"] == tokens.size
    back = read_bigram_counts(tmp_path / "stats")
    assert as_dict(back) == dict(reference_bigrams(tokens, loaded_bpe.vocab_size))
