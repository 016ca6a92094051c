"""Benchmark: the overlap test's hypergeometric null against brute-force shuffling, Pythia-1B size.

    python benchmarks/overlap_null.py [--draws N] [--brute-draws M] [--seed S] [--json PATH]

Two random masks with Pythia-1B's block structure (16 layers x Q, K, V, O of d x d and MLP-in,
MLP-out of 4d x d, d = 2048: 805,306,368 masked entries) at Table 3's densities: A ("bigram")
keeps 0.17%, B ("optimal") 0.93%, and 38% of A lies inside B. Kept counts vary by block (seeded
lognormal weights shared by A and B). Masks are built block by block as flat numpy bool arrays;
within a block the null is uniform, so the order of its entries does not matter.

* fast: `overlap_test` on the per-block counts, N null draws (default 10,000), best of R.
* brute: shuffle A's entries inside every block (`Generator.shuffle`, in place) and count
  |A ∧ B|, for M draws (default 2); its time per draw (the best of M) is extrapolated to N.
  Only A is shuffled: the overlap of a uniformly redrawn A with a fixed B has the same null
  distribution as redrawing both, at half the cost, so the speed-up is understated, not inflated.

Before any speed is reported the run checks the counts against the planted ones, the fast null's
mean and sd against the exact hypergeometric moments, and the brute draws against the exact mean;
a failure raises AssertionError (exit code 1). Missing the speed target (fast <= 1 s) only shows
up in the table: the exit code is 0. Imports numpy (and the project's overlap module) only.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bigram_subnetworks.analysis.overlap import (
    BlockOverlap,
    OverlapResult,
    expected_overlap,
    null_overlaps,
    overlap_sd,
    overlap_test,
)

N_LAYERS = 16
D_MODEL = 2048
BLOCK_KINDS = ("Q", "K", "V", "O", "MLP-in", "MLP-out")  # Layout.blocks() order
DENSITY_A = 0.0017  # Table 3, Pythia 1B: bigram subnetwork
DENSITY_B = 0.0093  # optimal subnetwork
SHARE_A_IN_B = 0.38  # share of the bigram subnetwork inside the optimal one
BLOCK_SIGMA = 1.0  # spread (log scale) of the per-block densities
TARGET_S = 1.0  # fast null, all draws
Z_TOLERANCE = 5.0  # correctness checks: allowed deviation in standard errors

T = TypeVar("T")


def verify(condition: bool, message: str) -> None:
    """A check that `python -O` cannot strip."""
    if not condition:
        raise AssertionError(message)


# ------------------------------------------------------------------------------ masks


def block_sizes() -> np.ndarray:
    """Entries per block, layer by layer in BLOCK_KINDS order (`Layout.blocks()` of gpt_neox)."""
    d2 = D_MODEL * D_MODEL
    return np.tile(np.array([d2, d2, d2, d2, 4 * d2, 4 * d2], dtype=np.int64), N_LAYERS)


def planned_counts(sizes: np.ndarray, rng: np.random.Generator) -> BlockOverlap:
    """Per-block kept counts at the target densities, with SHARE_A_IN_B of A planted in B."""
    weights = sizes * rng.lognormal(0.0, BLOCK_SIGMA, sizes.size)
    share = weights / weights.sum()
    kept_a = np.round(DENSITY_A * sizes.sum() * share).astype(np.int64)
    kept_b = np.round(DENSITY_B * sizes.sum() * share).astype(np.int64)
    both = np.minimum(np.round(SHARE_A_IN_B * kept_a).astype(np.int64), kept_b)
    return BlockOverlap(sizes, np.minimum(kept_a, sizes), np.minimum(kept_b, sizes), both)


def build_masks(
    plan: BlockOverlap, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Flat bool arrays per block for A and B with exactly the planned counts."""
    mask_a, mask_b = [], []
    for n, k_a, k_b, both in zip(plan.size, plan.kept_a, plan.kept_b, plan.both, strict=True):
        b = np.zeros(n, dtype=bool)
        in_b = rng.choice(n, k_b, replace=False)
        b[in_b] = True
        a = np.zeros(n, dtype=bool)
        a[in_b[:both]] = True  # choice's order is random: any `both` of B's entries
        a[rng.choice(np.flatnonzero(~b), k_a - both, replace=False)] = True
        mask_a.append(a)
        mask_b.append(b)
    return mask_a, mask_b


def count_blocks(mask_a: list[np.ndarray], mask_b: list[np.ndarray]) -> BlockOverlap:
    """The per-block counts the overlap test needs (one pass over the masks)."""
    return BlockOverlap(
        np.array([a.size for a in mask_a]),
        np.array([np.count_nonzero(a) for a in mask_a]),
        np.array([np.count_nonzero(b) for b in mask_b]),
        np.array([np.count_nonzero(a & b) for a, b in zip(mask_a, mask_b, strict=True)]),
    )


# ----------------------------------------------------------------------------- timing


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Wall time of one call with the garbage collector off (as `timeit` does), and its result."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        result = fn()
        return time.perf_counter() - start, result
    finally:
        if enabled:
            gc.enable()


def brute_draw(mask_a: list[np.ndarray], mask_b: list[np.ndarray], rng: np.random.Generator) -> int:
    """One brute-force null draw: shuffle A inside every block, count |A ∧ B|."""
    total = 0
    for a, b in zip(mask_a, mask_b, strict=True):
        rng.shuffle(a)
        total += int(np.count_nonzero(a & b))
    return total


# ------------------------------------------------------------------------------ checks


def check_fast(counts: BlockOverlap, result: OverlapResult, null: np.ndarray) -> dict[str, Any]:
    """The fast null's mean and sd agree with the exact hypergeometric moments."""
    expected, sd = expected_overlap(counts), overlap_sd(counts)
    draws = null.size
    mean_z = (null.mean() - expected) / (sd / math.sqrt(draws))
    verify(abs(mean_z) <= Z_TOLERANCE, f"fast null mean {null.mean():.1f} vs exact {expected:.1f}")
    sd_error = null.std() / sd - 1
    sd_tolerance = Z_TOLERANCE / math.sqrt(2 * max(draws - 1, 1))
    verify(
        draws < 2 or abs(sd_error) <= sd_tolerance,
        f"fast null sd {null.std():.2f} vs exact {sd:.2f} (tolerance {sd_tolerance:.1%})",
    )
    verify(
        result.p_value == (1 + np.count_nonzero(null >= counts.observed)) / (1 + draws),
        "overlap_test's p-value disagrees with its own null draws",
    )
    return {"mean_z": float(mean_z), "sd_rel_error": float(sd_error)}


def check_brute(counts: BlockOverlap, samples: list[int]) -> dict[str, Any]:
    """Brute-force draws agree with the exact mean (their mean, and each draw on its own)."""
    expected, sd = expected_overlap(counts), overlap_sd(counts)
    worst = max(abs(s - expected) / sd for s in samples)
    verify(worst <= Z_TOLERANCE + 1, f"a brute draw is {worst:.1f} sd from the exact mean")
    mean_z = (np.mean(samples) - expected) / (sd / math.sqrt(len(samples)))
    verify(abs(mean_z) <= Z_TOLERANCE, f"brute mean {np.mean(samples):.1f} vs exact {expected:.1f}")
    return {"mean_z": float(mean_z), "worst_draw_z": float(worst)}


# ------------------------------------------------------------------------------ output


def seconds(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    if s < 3600:
        return f"{s:.2f} s"
    return f"{s:,.0f} s ({s / 3600:.1f} h)"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=10_000, help="null draws (default 10,000)")
    parser.add_argument(
        "--brute-draws", type=int, default=2, help="brute-force draws actually run (default 2)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="fast null: best of R (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed for masks and draws")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.draws < 1 or args.brute_draws < 1 or args.repeat < 1:
        parser.error("--draws, --brute-draws and --repeat must be positive")

    started = time.perf_counter()
    machine = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    print(
        f"overlap null benchmark: machine {machine['platform']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}, numpy {machine['numpy']}"
    )
    rng = np.random.default_rng(args.seed)
    plan = planned_counts(block_sizes(), rng)
    build_s, (mask_a, mask_b) = timed(lambda: build_masks(plan, rng))
    count_s, counts = timed(lambda: count_blocks(mask_a, mask_b))
    for field in ("size", "kept_a", "kept_b", "both"):
        verify(
            np.array_equal(getattr(counts, field), getattr(plan, field)),
            f"{field}: counts from the masks differ from the planted ones",
        )
    print(
        f"Pythia-1B blocks: {N_LAYERS} layers x {len(BLOCK_KINDS)}, d = {D_MODEL}, "
        f"{counts.n_masked:,} entries; A keeps {counts.kept_a.sum():,}, B {counts.kept_b.sum():,}, "
        f"both {counts.observed:,} (masks built in {build_s:.1f} s, counted in {count_s:.2f} s)",
        flush=True,
    )

    fast_times = []
    for _ in range(args.repeat):
        elapsed, result = timed(lambda: overlap_test(counts, args.draws, args.seed))
        fast_times.append(elapsed)
    fast_s = min(fast_times)
    fast_check = check_fast(counts, result, null_overlaps(counts, args.draws, args.seed))
    print(f"fast null: best of {args.repeat}: {seconds(fast_s)}; checked OK", flush=True)

    brute_rng = np.random.default_rng([args.seed, 1])
    brute_times, samples = [], []
    for i in range(args.brute_draws):
        elapsed, sample = timed(lambda: brute_draw(mask_a, mask_b, brute_rng))
        brute_times.append(elapsed)
        samples.append(sample)
        print(f"brute draw {i + 1}/{args.brute_draws}: {elapsed:.2f} s", flush=True)
    verify(
        [np.count_nonzero(a) for a in mask_a] == counts.kept_a.tolist(),
        "shuffling changed A's per-block counts",
    )
    brute_check = check_brute(counts, samples)
    brute_per_draw = min(brute_times)
    brute_total = brute_per_draw * args.draws
    ratio = brute_total / fast_s
    met = fast_s <= TARGET_S

    print()
    print(
        table(
            [
                ["null", "draws", "time", "per draw", "mean overlap"],
                [
                    "hypergeometric",
                    f"{args.draws:,}",
                    seconds(fast_s),
                    seconds(fast_s / args.draws),
                    f"{result.null_mean:.4e}",
                ],
                [
                    "brute shuffle",
                    f"{args.brute_draws:,}",
                    seconds(sum(brute_times)),
                    seconds(brute_per_draw),
                    f"{np.mean(samples) / counts.n_masked:.4e}",
                ],
                ["brute shuffle*", f"{args.draws:,}", seconds(brute_total), "", ""],
            ]
        )
    )
    print(
        f"\n* extrapolated: best brute time per draw x {args.draws:,}. "
        f"Speed-up {ratio:,.0f}x; fast <= {TARGET_S:g} s: {'yes' if met else 'NO'}."
    )
    print(
        f"exact expected {result.expected:.4e} (sd {result.expected_sd:.2e}); observed "
        f"{result.observed:.4e} = {result.ratio:.2f}x, {result.share_a_in_b:.1%} of A inside B, "
        f"p = {result.p_value:.2g}"
    )
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    total_s = time.perf_counter() - started
    print(f"peak RSS {peak_rss / 2**30:.2f} GiB, total {total_s:.1f} s")

    if args.json:
        record = {
            "machine": machine,
            "setup": {
                "layers": N_LAYERS,
                "d_model": D_MODEL,
                "blocks": int(counts.size.size),
                "n_masked": counts.n_masked,
                "density_a": DENSITY_A,
                "density_b": DENSITY_B,
                "share_a_in_b": SHARE_A_IN_B,
                "block_sigma": BLOCK_SIGMA,
                "seed": args.seed,
                "build_s": build_s,
                "count_s": count_s,
            },
            "fast": {"draws": args.draws, "best_s": fast_s, "times_s": fast_times},
            "brute": {
                "draws": args.brute_draws,
                "times_s": brute_times,
                "best_per_draw_s": brute_per_draw,
                "samples": samples,
                "extrapolated_s": brute_total,
            },
            "ratio": ratio,
            "target_s": TARGET_S,
            "target_met": met,
            "result": asdict(result),
            "checks": {"fast": fast_check, "brute": brute_check},
            "peak_rss_bytes": peak_rss,
            "total_s": total_s,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
