"""N-gram loss cost: the trigram target's loss step against the bigram target's and a dense one.

At the default's sizes (vocabulary 4,096, d_model 80, batch 16 × 64), in the same run, on the same
hidden states and batch, one forward + backward of the loss head (logits, loss, d loss / d hidden):

  (a) bigram   the exact soft-target loss via M = P·W_U (`NgramTarget`, n = 2);
  (b) trigram  the exact loss via the CSR rows of P over trigram contexts: each position's row
               of M = P·W_U formed for this batch by one sparse (positions × V) product with W_U
               (n = 3; contexts never seen back off to the bigram's precomputed M);
  (c) dense    the trigram loss with a dense (batch, seq, vocab) target built every step from the
               tables (`dense_ngram_targets`), then cross-entropy with it.

The three are timed round-robin (a, b, c, a, b, c, ...), so that load from other processes hits
them alike; the medians and the median of the per-round ratios b/a are reported.

Target: (b)/(a) <= 1.3, and memory bounded by the n-gram table (reported: the counts and the
loss's device copy of P). The tables are counted from the default's train tokens when a data
folder is given (--data), else from a synthetic Zipf corpus. Reports only: exit 0 whether or not
the target is met, non-zero only when (b) and (c) disagree on the loss.

    .venv/bin/python benchmarks/ngram_loss.py [--tokens N] [--data DIR] [--steps N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bigram_subnetworks.data.ngrams import NgramCounts, count_ngrams
from bigram_subnetworks.data.tokenize import read_sequences
from bigram_subnetworks.io import read_json
from bigram_subnetworks.masks.losses import (
    NgramTarget,
    dense_ngram_cross_entropy,
    ngram_cross_entropy,
)
from bigram_subnetworks.models.loading import tune_cpu

VOCAB, D_MODEL, BATCH, SEQ_LEN = 4096, 80, 16, 64


def zipf_tokens(n_tokens: int, vocab: int, seed: int) -> np.ndarray:
    """(n, SEQ_LEN) tokens: Zipf(1.1) ranks r_i, token_i = (r_i + shift[r_{i-1}]) mod V with a
    seeded random shift per rank, so that the bigram and trigram tables have structure."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, vocab + 1, dtype=np.float64) ** -1.1
    cdf = np.cumsum(weights / weights.sum())
    ranks = np.minimum(np.searchsorted(cdf, rng.random(n_tokens)), vocab - 1)
    shift = rng.integers(0, vocab, vocab)
    tokens = ranks.copy()
    tokens[1:] = (ranks[1:] + shift[ranks[:-1]]) % vocab
    n_seq = n_tokens // SEQ_LEN
    return tokens[: n_seq * SEQ_LEN].reshape(n_seq, SEQ_LEN).astype(np.uint32)


def table_bytes(table: NgramCounts) -> int:
    return sum(a.nbytes for a in (table.context, table.crow, table.next, table.count))


def target_bytes(target: NgramTarget) -> int:
    parts: list[torch.Tensor | None] = [target.m, target.bias_term]
    if target.sparse is not None and target.lookup is not None:
        parts += [target.sparse.crow, target.sparse.col, target.sparse.value]
        parts += [index.keys for index in target.lookup.indexes]
    return sum(p.numel() * p.element_size() for p in parts if p is not None)


def time_round_robin(
    steps: list[Callable[[], float]], rounds: int, warmup: int
) -> list[list[float]]:
    """Seconds of each step in each round, the steps interleaved within a round."""
    for _ in range(warmup):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(rounds):
        for step, spent in zip(steps, times, strict=True):
            started = time.perf_counter()
            step()
            spent.append(time.perf_counter() - started)
    return times


def measure(tokens: np.ndarray, steps: int, warmup: int, seed: int) -> dict[str, float]:
    counted = time.perf_counter()
    tables = [count_ngrams(tokens, VOCAB, n) for n in (1, 2, 3)]
    count_s = time.perf_counter() - counted
    gen = torch.Generator().manual_seed(seed)
    unembed = torch.randn(VOCAB, D_MODEL, generator=gen) / D_MODEL**0.5
    bigram = NgramTarget.build(tables[:2], unembed)
    trigram = NgramTarget.build(tables, unembed)
    rows = torch.randint(0, tokens.shape[0], (BATCH,), generator=gen)
    batch = torch.from_numpy(tokens[rows.numpy()].astype(np.int64))
    hidden = (3 * torch.randn(BATCH, SEQ_LEN, D_MODEL, generator=gen)).requires_grad_(True)

    def step(loss_fn: Callable[[], torch.Tensor]) -> float:
        hidden.grad = None
        loss = loss_fn()
        loss.backward()
        return float(loss.detach())

    def dense_loss() -> torch.Tensor:
        return dense_ngram_cross_entropy(hidden @ unembed.T, batch, tables)

    fast = step(lambda: ngram_cross_entropy(hidden, batch, unembed, trigram))
    dense = step(dense_loss)
    if abs(fast - dense) > 1e-4 * max(1.0, abs(dense)):
        raise AssertionError(f"trigram loss {fast:.6f} != dense reference {dense:.6f}")
    bigram_t, trigram_t, dense_t = time_round_robin(
        [
            lambda: step(lambda: ngram_cross_entropy(hidden, batch, unembed, bigram)),
            lambda: step(lambda: ngram_cross_entropy(hidden, batch, unembed, trigram)),
            lambda: step(dense_loss),
        ],
        steps,
        warmup,
    )
    bigram_s, trigram_s, dense_s = map(statistics.median, (bigram_t, trigram_t, dense_t))
    paired = statistics.median(b / a for a, b in zip(bigram_t, trigram_t, strict=True))
    looked_up = trigram.lookup.rows(batch) if trigram.lookup is not None else None
    seen = float((looked_up >= 0).float().mean()) if looked_up is not None else 0.0
    gathered = 0
    if looked_up is not None and trigram.sparse is not None:
        safe = looked_up.clamp(min=0)
        sizes = trigram.sparse.crow[safe + 1] - trigram.sparse.crow[safe]
        gathered = int(torch.where(looked_up >= 0, sizes, 0).sum())
    return {
        "train_tokens": int(tokens.size),
        "count_s": count_s,
        "trigram_contexts": tables[2].n_contexts,
        "trigram_entries": int(tables[2].next.size),
        "bigram_entries": int(tables[1].next.size),
        "trigram_table_mb": table_bytes(tables[2]) / 2**20,
        "bigram_target_mb": target_bytes(bigram) / 2**20,
        "trigram_target_mb": target_bytes(trigram) / 2**20,
        "batch_seen_trigram_fraction": seen,
        "batch_gathered_entries": gathered,
        "bigram_ms": bigram_s * 1e3,
        "trigram_ms": trigram_s * 1e3,
        "dense_ms": dense_s * 1e3,
        "trigram_over_bigram": trigram_s / bigram_s,
        "trigram_over_bigram_paired": paired,
        "dense_over_trigram": dense_s / trigram_s,
        "loss_fast": fast,
        "loss_dense": dense,
    }


def load_tokens(data: Path) -> np.ndarray:
    vocab = int(read_json(data / "tokens.json")["vocab_size"])
    if vocab != VOCAB:
        raise SystemExit(f"{data}: vocabulary {vocab}; this benchmark is for the default's {VOCAB}")
    return read_sequences(data / "tokens_train.parquet")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2_000_000, help="synthetic corpus size")
    parser.add_argument("--data", type=Path, help="a data folder with tokens_train.parquet")
    parser.add_argument("--steps", type=int, default=20, help="timed rounds (medians reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    tune_cpu(args.threads)
    if args.data is not None:
        tokens, source = load_tokens(args.data), str(args.data)
    else:
        tokens, source = zipf_tokens(args.tokens, VOCAB, args.seed), "synthetic Zipf(1.1) chain"
    print(
        f"n-gram loss benchmark: V={VOCAB}, d={D_MODEL}, batch {BATCH}x{SEQ_LEN}, median of "
        f"{args.steps} rounds of forward+backward after {args.warmup} warm-up, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{platform.machine()} {platform.system()}; "
        f"tables from {source}",
        file=sys.stderr,
    )
    row = measure(tokens, args.steps, args.warmup, args.seed)
    print(
        f"tables: {row['train_tokens']:,} train tokens counted (orders 1-3) in "
        f"{row['count_s']:.1f} s; trigram {row['trigram_contexts']:,} contexts, "
        f"{row['trigram_entries']:,} entries ({row['trigram_table_mb']:.1f} MiB); bigram "
        f"{row['bigram_entries']:,} entries"
    )
    print(
        f"loss memory: bigram target {row['bigram_target_mb']:.1f} MiB (M), trigram target "
        f"{row['trigram_target_mb']:.1f} MiB (M + CSR rows + context keys)"
    )
    print(
        f"batch: {row['batch_seen_trigram_fraction']:.0%} of positions have a seen trigram "
        f"context; {row['batch_gathered_entries']:,} entries of P in its rows"
    )
    ok = "yes" if row["trigram_over_bigram"] <= 1.3 else "NO"
    print(
        f"(a) bigram {row['bigram_ms']:.2f} ms  (b) trigram {row['trigram_ms']:.2f} ms  "
        f"(c) dense {row['dense_ms']:.2f} ms  b/a {row['trigram_over_bigram']:.2f} "
        f"(per round {row['trigram_over_bigram_paired']:.2f}; target <= 1.3: {ok})  "
        f"c/b {row['dense_over_trigram']:.1f}"
    )
    print(
        f"(b) and (c) agree on the loss to 1e-4: {row['loss_fast']:.6f} vs {row['loss_dense']:.6f}"
    )
    if args.json:
        args.json.write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
