"""Ablations (the paper's §6.3 and Table 4): what the selected bigram mask does alone and what the
model loses without it, against random masks of the same structure and the paired optimal mask.

Conditions (a mask keeps what it marks; "removed" keeps the complement):
full model; bigram mask alone; random mask alone; bigram mask removed; random mask removed;
optimal mask removed. The random mask has the bigram mask's kept count in every block (Q, K, V, O,
MLP-in, MLP-out of every layer), at seeded uniform positions.

Size-matched comparison: the paired optimal mask is the sparsest one that keeps more weights than
the bigram mask, so it removes more, and harm grows faster than linearly with the weights removed.
Every optimal mask of the λ sweep is therefore removed too ("optimal removed, λ=<label>", surprisal
only), and `size_matched_increase` interpolates optimal removal's surprisal increase at the bigram
mask's kept count over that sweep.
"""

from __future__ import annotations

import bisect
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from bigram_subnetworks.analysis.scoring import LOG2E, eval_sample, score_mask
from bigram_subnetworks.artifacts import ABLATIONS, GENERATIONS
from bigram_subnetworks.config import Config
from bigram_subnetworks.data.bigrams import BigramCounts
from bigram_subnetworks.masks.losses import BigramTarget
from bigram_subnetworks.masks.toolkit import (
    Mask,
    complement,
    generate,
    keep_all,
    kept,
    masked,
    random_within_blocks,
)
from bigram_subnetworks.masks.train import MaskedLM
from bigram_subnetworks.models.layout import Layout

log = logging.getLogger(__name__)


SWEEP_CONDITION = "optimal removed, λ="  # + the λ label: one optimal mask of the sweep removed


def sweep_condition(label: str) -> str:
    """The ablation condition of removing the optimal mask of λ label `label`."""
    return SWEEP_CONDITION + label


def ablation_masks(
    layout: Layout, bigram: Mask, optimal: Mask | None, seed: int
) -> dict[str, Mask]:
    """The mask of every condition (without "optimal removed" when there is no optimal mask)."""
    random = random_within_blocks(bigram, layout, seed)
    conditions = {
        "full model": keep_all(layout),
        "bigram alone": bigram,
        "random alone": random,
        "bigram removed": complement(bigram),
        "random removed": complement(random),
    }
    if optimal is not None:
        conditions["optimal removed"] = complement(optimal)
    return conditions


def sweep_masks(optimal_sweep: dict[str, Mask]) -> dict[str, Mask]:
    """The removal condition of every optimal mask of the λ sweep (by λ label)."""
    return {sweep_condition(label): complement(mask) for label, mask in optimal_sweep.items()}


def size_matched_increase(sweep: list[tuple[float, float]], kept: float) -> float | None:
    """Optimal removal's surprisal increase at `kept` weights, from the sweep's (kept weights of
    the removed optimal mask, increase) points: linear in the kept count between the two points
    that bracket `kept` (a point at exactly `kept` gives its own value; several at one count,
    their mean). None when `kept` lies outside the sweep's range of kept counts: not resolved,
    never extrapolated."""
    points: dict[float, list[float]] = {}
    for count, increase in sweep:
        if math.isfinite(count) and math.isfinite(increase):
            points.setdefault(float(count), []).append(float(increase))
    if not points or not math.isfinite(kept):
        return None
    counts = sorted(points)
    values = [sum(points[c]) / len(points[c]) for c in counts]
    if not counts[0] <= kept <= counts[-1]:
        return None
    upper = bisect.bisect_left(counts, kept)
    if counts[upper] == kept:
        return values[upper]
    lo, hi = counts[upper - 1], counts[upper]
    return values[upper - 1] + (values[upper] - values[upper - 1]) * (kept - lo) / (hi - lo)


def surprisal_rows(
    model_name: str,
    lm: MaskedLM,
    conditions: dict[str, Mask],
    counts: BigramCounts,
    sequences: np.ndarray,
    batch_size: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Mean ± sd surprisal (bits) and perplexity of every condition on the eval sequences."""
    tokens = torch.from_numpy(sequences.astype(np.int64))
    target = BigramTarget.build(counts, lm.unembed, lm.unembed_bias)
    rows = []
    for condition, mask in conditions.items():
        bits, _ = score_mask(lm, mask, tokens, target, batch_size, device)
        mean = float(bits.mean())
        rows.append(
            {
                "model": model_name,
                "condition": condition,
                "kept": kept(mask),
                "kept_fraction": kept(mask) / lm.n_masked,
                "mean_surprisal_bits": mean,
                "sd_surprisal_bits": float(bits.std()),
                "lm_loss": mean / LOG2E,
                "perplexity": math.exp(mean / LOG2E),
                "tokens": int(bits.size),
            }
        )
    return rows


def generation_rows(
    model_name: str,
    model: torch.nn.Module,
    conditions: dict[str, Mask],
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> list[dict[str, Any]]:
    """Greedy and seeded sampled continuations of every prompt under every condition (only
    the tokenizer's ids: Pythia pads its embedding beyond them)."""
    vocabulary = tokenizer.get_vocab_size()
    rows = []
    decodings = (("greedy", 0.0), (f"sample τ={temperature:g}", temperature))
    for condition, mask in conditions.items():
        with masked(model, mask):
            for prompt in prompts:
                ids = torch.tensor(tokenizer.encode(prompt).ids)
                for decoding, tau in decodings:
                    new = generate(model, ids, max_new_tokens, tau, seed, vocab_size=vocabulary)
                    rows.append(
                        {
                            "model": model_name,
                            "condition": condition,
                            "prompt": prompt,
                            "decoding": decoding,
                            "text": tokenizer.decode(new.tolist(), skip_special_tokens=False),
                        }
                    )
    return rows


def run_stage(
    cfg: Config,
    *,
    models: list[Path],
    masks: list[Path],
    selection: Path,
    tokens_eval: Path,
    bigram_stats: Path,
    tokenizer: Path,
    ablations: Path,
    generations: Path,
) -> None:
    """The ablate stage: `ablations.parquet` and `generations.parquet` for every model."""
    from bigram_subnetworks.analysis.scoring import find_mask, index_masks
    from bigram_subnetworks.analysis.select import read_selection
    from bigram_subnetworks.data.bigrams import read_bigram_counts
    from bigram_subnetworks.data.tokenize import read_sequences
    from bigram_subnetworks.data.tokenizer import load_tokenizer
    from bigram_subnetworks.io import atomic_outputs, write_parquet
    from bigram_subnetworks.masks.toolkit import load_mask
    from bigram_subnetworks.models.loading import load_model, model_identity, pick_device

    settings = cfg.analysis
    counts = read_bigram_counts(bigram_stats)
    sequences = eval_sample(read_sequences(tokens_eval), settings.eval_sequences, cfg.seed)
    text_tokenizer = load_tokenizer(tokenizer).tokenizer
    device = pick_device(cfg.device)
    index = index_masks(masks)
    surprisals: list[dict[str, Any]] = []
    texts: list[dict[str, Any]] = []
    for model_dir in models:
        name = model_dir.name
        model, info = load_model(model_dir)
        model = model.to(device).eval()
        identity = model_identity(model_dir, info)
        lm = MaskedLM(model, counts.vocab_size)
        chosen = read_selection(selection, name)
        bigram = load_mask(
            find_mask(index, name, "bigram", chosen["bigram"]["lambda"]), lm.layout, identity
        )[0]
        optimal = (
            load_mask(
                find_mask(index, name, "full", chosen["optimal"]["lambda"]), lm.layout, identity
            )[0]
            if chosen["optimal"]
            else None
        )
        optimal_sweep = {
            m.label: load_mask(m.path, lm.layout, identity)[0]
            for m in index.get(name, [])
            if m.target == "full"
        }
        conditions = ablation_masks(lm.layout, bigram, optimal, cfg.seed)
        surprisals += surprisal_rows(
            name,
            lm,
            conditions | sweep_masks(optimal_sweep),
            counts,
            sequences,
            settings.batch_size,
            device,
        )
        texts += generation_rows(
            name,
            model,
            conditions,
            text_tokenizer,
            list(settings.prompts),
            settings.max_new_tokens,
            settings.temperature,
            cfg.seed,
        )
        log.info(
            "%s: %d ablation conditions, %d optimal masks of the sweep removed",
            name,
            len(conditions),
            len(optimal_sweep),
        )
    with atomic_outputs(ablations, generations) as (table_file, text_file):
        write_parquet(
            pa.Table.from_pylist(surprisals, schema=ABLATIONS.schema), table_file, seed=cfg.seed
        )
        write_parquet(
            pa.Table.from_pylist(texts, schema=GENERATIONS.schema), text_file, seed=cfg.seed
        )
