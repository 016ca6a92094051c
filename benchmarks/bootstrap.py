"""Benchmark: what the bootstrap intervals add to the evaluate stage.

    .venv/bin/python benchmarks/bootstrap.py [--shapes ...] [--masks M] [--resamples B]
                                             [--repeat R] [--threads T] [--json PATH]

For each model shape, `analysis.scoring.score_masks` (the evaluate stage's work for one model: the
full model, the empty mask and M trained masks, each scored on every eval position) runs twice on
the same eval sequences, the same masks and the same bigram table: with `resamples=0` (no
intervals) and with B resamples (default 1,000, the config default `analysis.bootstrap_resamples`),
which adds the per-sequence sums (count, Σx, Σy, Σx², Σy², Σxy) of the three r of every mask, one
(B × n) · (n × 18) product per mask and the percentile intervals, plus one (B × n) resample-count
matrix per model, and the replicates file the evaluate stage writes for paired comparisons
(`masks_replicates.parquet`: B × 3 values per mask). Reported: best-of-R seconds of each
(interleaved runs) and their ratio, and the bootstrap's own work timed alone on arrays of the
same shapes, as (without + work) / without: on a shared machine the end-to-end ratio drifts with
the load, the second does not. Target: ≤ 1.10.

Shapes: the embedded default's largest model (`params.yaml`: neox-4x96, vocabulary 4,096,
2,000 eval sequences of 64 tokens, the default `analysis.eval_sequences`; the default shape) and,
with `--shapes pythia-70m`, a randomly initialised Pythia-70M shape (vocabulary 50,277, 200
sequences of 128 tokens: a CPU cannot score the paper's 10K sequences in a benchmark's time; the
bootstrap's share only shrinks with bigger models). Bigram tables come from seeded synthetic Zipf
tokens with a per-token successor shift, masks are seeded Bernoulli masks of densities 0.5, 0.2,
0.05, 0.01, ...

Before any time is reported, the run checks on the first shape that each mask's interval
contains its r and that the vectorised bootstrap equals brute-force Pearson r on 20 resampled sets
of whole sequences; a failure raises AssertionError (exit code 1). Missing the target only shows in
the table: the exit code is 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigram_subnetworks.analysis.scoring import (
    Bootstrap,
    MaskFile,
    bigram_surprisal,
    clip_infinite,
    pearson,
    replicate_series,
    replicate_table,
    score_masks,
    sequence_moments,
)
from bigram_subnetworks.data.bigrams import count_bigrams
from bigram_subnetworks.io import write_parquet
from bigram_subnetworks.masks.toolkit import save_mask
from bigram_subnetworks.models.layout import layout_of
from mask_step import build_model  # benchmarks/ is on sys.path when a script runs

TARGET = 1.10  # with / without bootstrap


def verify(condition: bool, message: str) -> None:
    """A check that `python -O` cannot strip."""
    if not condition:
        raise AssertionError(message)


@dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    d_model: int
    heads: int
    vocab: int  # tokenizer vocabulary (bigram table)
    embedding_rows: int
    sequences: int
    seq_len: int
    batch: int


SHAPES = {
    "neox-4x96": Shape("neox-4x96", 4, 96, 6, 4096, 4096, 2000, 64, 32),
    "pythia-70m": Shape("pythia-70m", 6, 512, 8, 50277, 50304, 200, 128, 8),
}


def synthetic_tokens(vocab: int, n_sequences: int, seq_len: int, seed: int) -> np.ndarray:
    """Zipf-distributed tokens whose successors depend on the current token (a bigram process)."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    zipf = ranks**-1.1 / np.sum(ranks**-1.1)
    shift = rng.integers(0, vocab, size=vocab)
    draws = rng.choice(vocab, size=(n_sequences, seq_len), p=zipf)
    tokens = draws.copy()
    tokens[:, 1:] = (draws[:, 1:] + shift[tokens[:, :-1] % vocab]) % vocab
    return tokens.astype(np.uint32)


def write_masks(model: torch.nn.Module, count: int, folder: Path) -> list[MaskFile]:
    """`count` seeded Bernoulli masks (densities 0.5, 0.2, 0.05, 0.01, 0.005, ...) as mask files."""
    layout = layout_of(model)
    generator = torch.Generator().manual_seed(0)
    densities = [0.5, 0.2, 0.05, 0.01, 0.005, 0.002, 0.001, 0.0005][:count]
    files = []
    for i, density in enumerate(densities):
        mask = {
            name: torch.rand(shape, generator=generator) < density
            for name, shape in layout.shapes.items()
        }
        path = folder / "bench" / "bigram" / f"lambda-{i + 1}.safetensors"
        save_mask(path, mask, {"lambda": str(i + 1)})
        files.append(MaskFile.of(path))
    return files


def check_bootstrap(sequences: np.ndarray, counts: Any, found: Any, resamples: int) -> None:
    """Intervals contain their r; the vectorised resamples equal brute-force Pearson r."""
    rows = [r for r in found.metrics if r["metric"].startswith("bigram_r")]
    values = {(r["target"], r["lambda"], r["metric"]): r["value"] for r in rows}
    for (target, label, metric), value in values.items():
        if metric in ("bigram_r", "bigram_r_dropinf"):
            low, high = (
                values[(target, label, metric + "_low")],
                values[(target, label, metric + "_high")],
            )
            verify(
                low <= value <= high, f"{target} λ={label} {metric}: {value} not in [{low}, {high}]"
            )
    reference = clip_infinite(bigram_surprisal(counts, sequences))
    rng = np.random.default_rng(1)
    x = rng.normal(size=reference.shape) + reference  # any per-token series with the same shape
    resampling = Bootstrap.draw(len(sequences), 20, seed=5)
    fast = resampling.replicates(sequence_moments(x, reference))
    for b in range(20):
        picked = np.repeat(np.arange(len(sequences)), resampling.counts[b].astype(int))
        slow = pearson(x[picked], reference[picked])
        verify(abs(fast[b] - slow) < 1e-9, f"resample {b}: vectorised {fast[b]} vs brute {slow}")
    verify(resamples > 0, "the check needs resamples")


def bootstrap_work(n: int, positions: int, masks: int, resamples: int, repeat: int) -> float:
    """Seconds of exactly the work the bootstrap adds to one `score_masks` call of `masks`
    scored masks on n sequences of `positions` targets: one resample-count matrix, then per mask
    the three r's per-sequence sums, their resampled r and the intervals (on seeded arrays of
    the same shapes; best of `repeat`)."""
    rng = np.random.default_rng(2)
    bits = rng.gamma(2.0, 3.0, size=(n, positions))
    reference = rng.gamma(2.0, 3.0, size=(n, positions))
    reference[rng.random(reference.shape) < 0.03] = np.inf
    finite = np.isfinite(reference)
    clipped = clip_infinite(reference)

    def run() -> None:
        resampling = Bootstrap.draw(n, resamples, 0)
        stored = {}
        for mask in range(masks):
            moments = np.stack(
                [
                    sequence_moments(bits, clipped),
                    sequence_moments(bits, np.where(finite, reference, 0.0), finite),
                    sequence_moments(bits, bits),
                ],
                axis=1,
            )
            draws = resampling.replicates(moments)
            for i in range(3):
                resampling.interval(draws[:, i])
            stored[("bigram", str(mask))] = draws
        with tempfile.TemporaryDirectory() as folder:  # the replicates file the stage writes
            table = replicate_table(replicate_series("bench", stored))
            write_parquet(table, Path(folder) / "replicates.parquet", seed=0)

    return min(timed(run) for _ in range(repeat))


def timed(run: Any) -> float:
    gc.collect()
    gc.disable()
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    gc.enable()
    return elapsed


def measure(shape: Shape, masks: int, resamples: int, repeat: int, check: bool) -> dict[str, Any]:
    model = build_model(shape)
    train = synthetic_tokens(shape.vocab, 20_000, shape.seq_len, seed=0)
    counts = count_bigrams(train, shape.vocab)
    sequences = synthetic_tokens(shape.vocab, shape.sequences, shape.seq_len, seed=1)
    device = torch.device("cpu")
    found: dict[str, Any] = {}
    times: dict[int, list[float]] = {0: [], resamples: []}
    with tempfile.TemporaryDirectory() as folder:
        files = write_masks(model, masks, Path(folder))

        def run(b: int) -> None:
            found[b] = score_masks(
                shape.name, model, files, counts, sequences, shape.batch, device, None, b, 0
            )
            if b:  # the evaluate stage also writes every r's replicates (paired comparisons)
                table = replicate_table(replicate_series(shape.name, found[b].replicates))
                write_parquet(table, Path(folder) / "replicates.parquet", seed=0)

        for _ in range(repeat):  # interleaved, so drifting machine load hits both alike
            for b in (0, resamples):
                times[b].append(timed(lambda b=b: run(b)))
    if check:
        check_bootstrap(sequences, counts, found[resamples], resamples)
    without, with_bootstrap = min(times[0]), min(times[resamples])
    work = bootstrap_work(shape.sequences, shape.seq_len - 1, masks + 2, resamples, 3)
    unseen = next(r["value"] for r in found[0].metrics if r["metric"] == "unseen_fraction")
    return {
        "shape": shape.name,
        "masked": layout_of(model).n_masked,
        "vocab": shape.vocab,
        "sequences": f"{shape.sequences}x{shape.seq_len}",
        "masks_scored": masks + 2,
        "resamples": resamples,
        "without_s": without,
        "with_s": with_bootstrap,
        "ratio": with_bootstrap / without,
        "bootstrap_work_s": work,
        "work_ratio": (without + work) / without,
        "unseen_fraction": unseen,
        "times": {str(k): v for k, v in times.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["neox-4x96"], choices=list(SHAPES))
    parser.add_argument("--masks", type=int, default=4, help="trained masks per model (≤ 8)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2, help="each timing is the best of R")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [
        measure(SHAPES[name], args.masks, args.resamples, args.repeat, check=i == 0)
        for i, name in enumerate(args.shapes)
    ]
    print(
        f"bootstrap benchmark: score_masks with vs without {args.resamples} resamples, best of "
        f"{args.repeat}, {args.threads} torch threads, torch {torch.__version__}, "
        f"{platform.machine()} {platform.system()}"
    )
    header = (
        f"{'shape':<11}{'masked':>12}{'vocab':>7}{'eval seqs':>11}{'masks':>7}"
        f"{'without':>10}{'with':>10}{'ratio':>8}{'added':>9}{'(w+a)/w':>9}  target"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        met = "yes" if max(r["ratio"], r["work_ratio"]) <= TARGET else "NO"
        print(
            f"{r['shape']:<11}{r['masked']:>12,}{r['vocab']:>7}{r['sequences']:>11}"
            f"{r['masks_scored']:>7}{r['without_s']:>9.2f}s{r['with_s']:>9.2f}s"
            f"{r['ratio']:>8.3f}{r['bootstrap_work_s']:>8.3f}s{r['work_ratio']:>9.4f}"
            f"  ≤{TARGET:.2f} {met}"
        )
    print("ratio: end to end (with / without); added: the bootstrap's own work timed alone;")
    print("(w+a)/w: without plus that work, over without (immune to the machine's load drift)")
    print("intervals contain their r and match brute-force resampling (checked in the run)")
    if args.json:
        args.json.write_text(json.dumps({"target": TARGET, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
