"""Vectorised bigram counting equals a plain-Python dict count, on every key and chunking path."""

from __future__ import annotations

import copy
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bigram_subnetworks.config import restrict, validate_config
from bigram_subnetworks.data import bigram_stream, bigrams
from bigram_subnetworks.data import corpus as corpus_module
from bigram_subnetworks.data.bigram_stream import SequenceCounter, merge_sorted_counts
from bigram_subnetworks.data.bigrams import (
    BigramCounts,
    build_bigram_stats,
    count_bigrams,
    counts_from_keys,
    key_dtype,
    read_bigram_counts,
    write_bigram_stats,
)
from bigram_subnetworks.data.corpus import build_corpus
from bigram_subnetworks.data.tokenize import (
    cut_sequences,
    read_sequences,
    token_stream,
    tokenize_corpus,
)
from bigram_subnetworks.data.tokenizer import LoadedTokenizer, build_tokenizer, load_tokenizer
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.stages import STAGES, data_keys, key_parts
from bigram_subnetworks.stages import settings as stage_settings


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


# ------------------------------------------------------ streamed from the source (bigram_tokens)


def stream_reference(stream: list[int], vocab_size: int, seq_len: int, limit: int) -> Counter:
    """The slow reference over a token stream: position p starts a sequence when p % seq_len is 0
    (prev = the start context), else prev is the token before it; only p < limit counts."""
    pairs: Counter[tuple[int, int]] = Counter()
    for p in range(limit):
        pairs[(vocab_size if p % seq_len == 0 else stream[p - 1], stream[p])] += 1
    return pairs


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[list[int]], int, int, int, list[int]]:
    """Documents (each ending with end-of-text id 0), vocabulary, seq_len, limit, cut points."""
    vocab_size = draw(st.integers(2, 60))
    documents = draw(
        st.lists(st.lists(st.integers(1, vocab_size - 1), max_size=30), min_size=1, max_size=12)
    )
    documents = [[*d, 0] for d in documents]
    total = sum(map(len, documents))
    seq_len = draw(st.integers(1, 12))
    limit = draw(st.integers(0, total // seq_len)) * seq_len
    cuts = sorted(draw(st.lists(st.integers(0, total), max_size=6)))
    return documents, vocab_size, seq_len, limit, cuts


@settings(max_examples=200, deadline=None)
@given(data=streams())
def test_stream_counts_equal_the_in_memory_path_and_a_dict(
    data: tuple[list[list[int]], int, int, int, list[int]],
) -> None:
    documents, vocab_size, seq_len, limit, cuts = data
    stream = np.array([t for d in documents for t in d], dtype=np.uint32)
    counter = SequenceCounter(vocab_size, seq_len, limit)
    keys = np.empty(0, dtype=key_dtype(vocab_size))
    counts = np.empty(0, dtype=np.uint64)
    unigram = np.zeros(vocab_size, dtype=np.uint64)
    start = 0
    for cut in [*cuts, stream.size]:  # pieces of any length, a shard closed after each
        counter.add(stream[start:cut])
        start = max(start, cut)
        piece_keys, piece_counts, piece_unigram = counter.take()
        keys, counts = merge_sorted_counts(keys, counts, piece_keys, piece_counts)
        unigram += piece_unigram
    assert counter.position == limit and counter.full
    streamed = counts_from_keys(keys, counts, unigram, vocab_size, limit // seq_len)
    assert as_dict(streamed) == dict(stream_reference(stream.tolist(), vocab_size, seq_len, limit))
    if limit:
        in_memory = count_bigrams(cut_sequences(stream, seq_len)[: limit // seq_len], vocab_size)
        for name in ("prev", "next", "count", "unigram"):
            assert np.array_equal(getattr(streamed, name), getattr(in_memory, name)), name


def test_merge_sorted_counts_adds_shared_keys_and_inserts_new_ones() -> None:
    keys, counts = merge_sorted_counts(
        np.array([2, 5, 9], dtype=np.uint32),
        np.array([1, 1, 1], dtype=np.uint64),
        np.array([0, 5, 7, 10], dtype=np.uint32),
        np.array([4, 2, 3, 6], dtype=np.uint64),
    )
    assert keys.tolist() == [0, 2, 5, 7, 9, 10] and counts.tolist() == [4, 1, 3, 3, 1, 6]


WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "quickly,"]


@pytest.fixture
def local_data(tmp_path: Path) -> dict[str, Any]:
    """A local corpus of 30 files, its corpus stage, a BPE and the in-memory tokenize stage."""
    texts = tmp_path / "texts"
    texts.mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):
        words = rng.choice(WORDS, size=int(rng.integers(1, 200)))
        (texts / f"doc-{i:02d}.txt").write_text(" ".join(words), encoding="utf-8")
    raw = {
        "run": "stream",
        "corpus": {"name": "words", "source": "local", "path": str(texts), "eval_fraction": 0.2},
        "tokenizer": {"name": "bpe", "source": "train", "vocab_size": 300, "min_frequency": 1},
        "data": {"seq_len": 16},
    }
    cfg = validate_config(raw)
    build_corpus(cfg.corpus, cfg.seed, tmp_path / "corpus")
    documents = tmp_path / "corpus" / "documents.parquet"
    build_tokenizer(cfg.tokenizer, documents, tmp_path / "tokenizer")
    tokenize_corpus(documents, load_tokenizer(tmp_path / "tokenizer"), cfg.data, 0, tmp_path / "d")
    summary = json.loads((tmp_path / "d" / "tokens.json").read_text())
    return {
        "raw": raw,
        "texts": texts,
        "documents": documents,
        "tokenizer": tmp_path / "tokenizer",
        "in_memory": tmp_path / "d",
        "whole_tokens": summary["splits"]["train"]["sequences"] * 16,
    }


def run_streamed(data: dict[str, Any], output: Path, bigram_tokens: int) -> None:
    """The bigram_stats stage with data.bigram_tokens, on a config restricted to its reads."""
    raw = copy.deepcopy(data["raw"])
    raw["data"]["bigram_tokens"] = bigram_tokens
    cfg = validate_config(raw)
    stage = STAGES["bigram_stats"]
    view = restrict(cfg, [key_parts(key, {}) for key in stage.reads], stage.name)
    bigrams.run_stage(
        view,
        bigram_stats=output,
        documents=data["documents"],
        tokenizer=data["tokenizer"],
        source=data["texts"],
    )


def assert_same_counts(a: BigramCounts, b: BigramCounts) -> None:
    for name in ("prev", "next", "count", "unigram"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert (a.vocab_size, a.n_sequences) == (b.vocab_size, b.n_sequences)


def test_streamed_stats_equal_the_in_memory_stage_on_the_shared_sample(
    local_data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_bigram_stats(local_data["in_memory"] / "tokens_train.parquet", local_data["in_memory"])
    in_memory = read_bigram_counts(local_data["in_memory"])
    monkeypatch.setattr(bigram_stream, "SHARD_TOKENS", 200)  # many shards, merged
    monkeypatch.setattr(bigram_stream, "BATCH_CHARACTERS", 500)  # many encode batches
    # All the train split's whole sequences (a partial one past them is left out).
    run_streamed(local_data, tmp_path / "streamed", local_data["whole_tokens"] + 15)
    streamed = read_bigram_counts(tmp_path / "streamed")
    assert_same_counts(streamed, in_memory)
    meta = json.loads((tmp_path / "streamed" / "bigrams.json").read_text())
    assert meta["shards"] > 3 and meta["n_tokens"] == local_data["whole_tokens"]
    assert meta["bigram_tokens"] == local_data["whole_tokens"] + 15
    assert not (tmp_path / "streamed" / bigram_stream.STATE_DIR).exists()  # removed when done

    # Fewer tokens: the first whole sequences of the same stream, as the slow reference counts.
    tokens = read_sequences(local_data["in_memory"] / "tokens_train.parquet")
    run_streamed(local_data, tmp_path / "fewer", 16 * 7)
    fewer = read_bigram_counts(tmp_path / "fewer")
    assert as_dict(fewer) == dict(reference_bigrams(tokens[:7], in_memory.vocab_size))


def test_too_few_tokens_is_one_line_and_writes_no_statistics(
    local_data: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(UserError, match=r"^data\.bigram_tokens: the train documents hold") as err:
        run_streamed(local_data, tmp_path / "out", local_data["whole_tokens"] + 16)
    assert "\n" not in str(err.value) and "lower data.bigram_tokens" in str(err.value)
    assert not (tmp_path / "out" / "bigrams.json").exists()


class Interrupted(Exception):
    pass


def interrupt_after(monkeypatch: pytest.MonkeyPatch, n_documents: int) -> None:
    """Make the corpus source fail after n documents, as a killed job stops reading."""
    original = corpus_module.iter_documents

    def failing(cfg: Any) -> Any:
        for i, document in enumerate(original(cfg)):
            if i == n_documents:
                raise Interrupted
            yield document

    monkeypatch.setattr(corpus_module, "iter_documents", failing)


def encoded_texts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the stream sends to the tokenizer from now on."""
    seen: list[str] = []
    original = bigram_stream.text_batches

    def recording(documents: Any, characters: int) -> Any:
        for batch in original(documents, characters):
            seen.extend(batch)
            yield batch

    monkeypatch.setattr(bigram_stream, "text_batches", recording)
    return seen


def test_an_interrupted_count_resumes_after_its_last_shard(
    local_data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bigram_stream, "SHARD_TOKENS", 300)
    monkeypatch.setattr(bigram_stream, "BATCH_CHARACTERS", 1)  # one document per batch
    tokens = local_data["whole_tokens"]
    run_streamed(local_data, tmp_path / "whole", tokens)
    with monkeypatch.context() as patch:
        interrupt_after(patch, 18)
        with pytest.raises(Interrupted):
            run_streamed(local_data, tmp_path / "out", tokens)
    state = json.loads((tmp_path / "out" / bigram_stream.STATE_DIR / "state.json").read_text())
    done = sum(shard["documents"] for shard in state["shards"])
    assert len(state["shards"]) >= 2 and 0 < done < 18
    assert not (tmp_path / "out" / "bigrams.json").exists()

    texts = encoded_texts(monkeypatch)
    run_streamed(local_data, tmp_path / "out", tokens)
    assert_same_counts(read_bigram_counts(tmp_path / "out"), read_bigram_counts(tmp_path / "whole"))
    train_documents = json.loads((tmp_path / "whole" / "bigrams.json").read_text())["documents"]
    assert len(texts) <= train_documents - done + 1  # the shards done were not encoded again


def test_a_changed_corpus_discards_the_saved_shards(
    local_data: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(bigram_stream, "SHARD_TOKENS", 300)
    monkeypatch.setattr(bigram_stream, "BATCH_CHARACTERS", 1)
    tokens = local_data["whole_tokens"]
    with monkeypatch.context() as patch:
        interrupt_after(patch, 12)
        with pytest.raises(Interrupted):
            run_streamed(local_data, tmp_path / "out", tokens)
    assert (tmp_path / "out" / bigram_stream.STATE_DIR / "state.json").exists()
    table = pq.read_table(local_data["documents"])
    splits = dict(zip(table["doc_id"].to_pylist(), table["split"].to_pylist(), strict=True))
    first = min(doc_id for doc_id, split in splits.items() if split == "train")
    (local_data["texts"] / first).write_text("the dog sat. " * 400, encoding="utf-8")
    with caplog.at_level(logging.INFO, logger=bigram_stream.__name__):
        run_streamed(local_data, tmp_path / "out", tokens)
    assert "the corpus changed since the saved bigram shards; starting over" in caplog.text
    run_streamed(local_data, tmp_path / "fresh", tokens)
    assert_same_counts(read_bigram_counts(tmp_path / "out"), read_bigram_counts(tmp_path / "fresh"))


def test_bigram_tokens_config_registry_and_data_folder() -> None:
    raw: dict[str, Any] = {"run": "r", "corpus": {"name": "c", "source": "local", "path": "t"}}
    raw["tokenizer"] = {"name": "bpe", "source": "train", "vocab_size": 300}
    raw["data"] = {"seq_len": 64, "bigram_tokens": 10}
    with pytest.raises(UserError, match=r"data\.bigram_tokens \(10\) is less than one sequence"):
        validate_config(raw)
    raw["data"] = {"seq_len": 64}
    in_memory = validate_config(raw)
    raw["data"]["bigram_tokens"] = 1_280_000_000
    streamed = validate_config(raw)
    stage = STAGES["bigram_stats"]
    assert set(stage.ports(in_memory)) == {"tokens_train", "tokens_meta", "bigram_stats"}
    assert set(stage.ports(streamed)) == {"documents", "tokenizer", "source", "bigram_stats"}
    assert not stage.network(streamed)
    raw["corpus"] = {"name": "c", "source": "huggingface", "dataset": "org/web"}
    hub = validate_config(raw)
    assert stage.network(hub) and "source" not in stage.ports(hub)
    # Only the token folder's key changes; the tokenize stage does not rerun.
    before, after = data_keys(in_memory), data_keys(streamed)
    assert before["corpus"] == after["corpus"] and before["tokenizer"] == after["tokenizer"]
    assert before["data"] != after["data"]
    tokenize = STAGES["tokenize"]
    assert stage_settings(tokenize, in_memory, {}) == stage_settings(tokenize, streamed, {})
