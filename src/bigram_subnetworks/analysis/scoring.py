"""Scoring masks on held-out sequences: the library behind evaluate, checkpoints and controls.

Per mask (and for the full model and the empty mask): kept count and fraction; the Pearson r
between the masked model's per-token surprisal and the bigram model's (bits; bigram surprisals of
zero-probability pairs clipped to the largest finite one, and a variant that drops those tokens);
the soft-target bigram cross-entropy; the LM loss and perplexity (beside the full model's, the
smoothed bigram baseline's loss on the same positions: every model's eval loss and its bar, one
code path for embedded, Hub and local models); the r with the full model's surprisal; the share
of eval positions whose bigram was never counted (`unseen_fraction`: the positions the clipped r
clips and the drop-unseen r drops). Per block (layer × Q/K/V/O/MLP-in/
MLP-out) and per head: kept fractions.

With n-gram tables (`score_masks(ngram_tables=...)`: the evaluate stage passes every n-gram target
of its masks), per order T also: `<T>_r` and `<T>_r_dropinf`, the r with the order-n model's
surprisal as the bigram r is computed (contexts never seen in train back off to the unigram;
zero-probability tokens clipped or dropped; for the bigram these are `bigram_r` and
`bigram_r_dropinf` themselves), for n ≥ 3 `<T>_r_backoff`, the r with the back-off model the
authors' n-gram model is and the masks are trained towards (an unseen context backs off to its
longest suffix seen: the (n − 1)-gram, ...; for n ≤ 2 that model is the order-n model itself), and
`<T>_unseen_context_fraction`, the share of positions whose n − 1 tokens of context never occurred
in train (far more at n = 3). Every r has its interval and replicates.

Every r comes with a seeded percentile bootstrap interval over eval *sequences* (`<metric>_low`,
`<metric>_high`; 95%): each resample draws the n sequences with replacement, and because a Pearson
r is a function of six sums (count, Σx, Σy, Σx², Σy², Σxy), each sequence is reduced to those six
numbers once and every resample is one row of a (resamples × n) count matrix times that (n × 6)
table: one small matrix product per mask instead of re-scoring. All masks of one evaluation share
the resamples, so their intervals are paired.

Predictions are scored at positions 0..T-2 of every eval sequence (the next token is known), each
conditioned on its real current token, as in the paper.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from bigram_subnetworks.artifacts import (
    BLOCKS,
    CI_LEVEL,
    MASK,
    MASK_METRICS,
    NGRAM_ORDERS,
    REPLICATES_SCHEMA,
)
from bigram_subnetworks.config import lambda_value
from bigram_subnetworks.data.bigrams import (
    BigramCounts,
    bigram_baseline_cross_entropy,
    context_totals,
    pair_counts,
)
from bigram_subnetworks.data.ngrams import NgramCounts, ngram_surprisal
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.masks.losses import BigramTarget
from bigram_subnetworks.masks.toolkit import (
    Mask,
    block_counts,
    head_counts,
    keep_all,
    keep_none,
    load_mask,
)
from bigram_subnetworks.masks.train import MaskedLM

log = logging.getLogger(__name__)

LOG2E = 1.0 / math.log(2.0)
REFERENCE = "reference"  # target label of the full-model and empty-mask rows
LOW, HIGH = "_low", "_high"  # suffixes of an r metric's interval bounds
R_METRICS = ("bigram_r", "bigram_r_dropinf", "full_model_r")  # the r values with intervals
BOOTSTRAP_STREAM = 0xB007  # seeds the resamples apart from every other use of the run's seed


@dataclass(frozen=True)
class MaskFile:
    """One trained mask: its model key, target, λ label and file."""

    model: str
    target: str
    label: str
    path: Path

    @property
    def lam(self) -> float:
        return lambda_value(self.label)

    @classmethod
    def of(cls, path: Path | str) -> MaskFile:
        """A mask file named as the train_mask stage names it (artifacts.MASK)."""
        try:
            fields = MASK.parse(str(path))
        except ValueError as error:
            raise UserError(f"{path}: not a mask path of the pipeline ({error})") from None
        return cls(fields["model"], fields["target"], fields["lam"], Path(path))


def index_masks(paths: list[Path]) -> dict[str, list[MaskFile]]:
    """The given mask files by model key, each list sorted by target and λ."""
    index: dict[str, list[MaskFile]] = {}
    for mask in map(MaskFile.of, paths):
        index.setdefault(mask.model, []).append(mask)
    return {key: sorted(found, key=lambda m: (m.target, m.lam)) for key, found in index.items()}


def find_mask(index: dict[str, list[MaskFile]], model: str, target: str, label: str) -> Path:
    """The file of one mask among the given ones (one-line error when it was not given)."""
    for mask in index.get(model, []):
        if mask.target == target and mask.label == label:
            return mask.path
    raise UserError(
        f"no {target} mask with λ={label} of {model} among the stage's inputs; rerun the "
        "workflow (the selection and the masks disagree)"
    )


def bigram_surprisal(counts: BigramCounts, sequences: np.ndarray) -> np.ndarray:
    """Bigram surprisal (bits) of every next token, shape (n, T-1); inf where P = 0.

    P(next | cur) is unsmoothed; contexts never seen in training back off to the unigram
    distribution (the start context is never a prediction context here)."""
    prev = sequences[:, :-1].ravel().astype(np.int64)
    nxt = sequences[:, 1:].ravel().astype(np.int64)
    totals = context_totals(counts)[prev]
    unigram = counts.unigram.astype(np.float64) / max(counts.unigram.sum(), 1)
    seen = totals > 0
    prob = np.where(
        seen,
        pair_counts(counts, prev, nxt) / np.where(seen, totals, 1.0),
        unigram[nxt],
    )
    with np.errstate(divide="ignore"):
        bits = -np.log2(prob)
    return bits.reshape(sequences.shape[0], -1)


def clip_infinite(values: np.ndarray) -> np.ndarray:
    """Infinite values replaced by the largest finite one (as the paper's evaluation does)."""
    finite = np.isfinite(values)
    if finite.all():
        return values
    if not finite.any():
        raise UserError("every bigram surprisal is infinite; the eval data shares no bigram")
    return np.where(finite, values, values[finite].max())


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two flat arrays; NaN when either is constant."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denominator if denominator > 0 else float("nan")


# -------------------------------------------------------------------------------- bootstrap


def sequence_moments(x: np.ndarray, y: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Per-sequence sufficient statistics of a Pearson r between x and y, both (n, T): an (n, 6)
    float64 table of count, Σx, Σy, Σx², Σy², Σxy over each row's positions (where `keep`).
    x and y are first centred on their overall means (over the kept positions), which leaves
    every r unchanged and keeps the sums of squares well conditioned."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    weight = np.ones_like(x) if keep is None else np.asarray(keep, dtype=np.float64)
    total = weight.sum()
    if total > 0:
        x = x - (np.where(weight > 0, x, 0.0).sum() / total)
        y = y - (np.where(weight > 0, y, 0.0).sum() / total)
    x, y = np.where(weight > 0, x, 0.0), np.where(weight > 0, y, 0.0)
    return np.stack(
        [
            weight.sum(1),
            x.sum(1),
            y.sum(1),
            (x * x).sum(1),
            (y * y).sum(1),
            (x * y).sum(1),
        ],
        axis=1,
    )


def r_from_moments(moments: np.ndarray) -> np.ndarray:
    """Pearson r from summed moments (..., 6) (see `sequence_moments`); NaN where either variable
    is constant."""
    n, sx, sy, sxx, syy, sxy = np.moveaxis(np.asarray(moments, dtype=np.float64), -1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = sxy - sx * sy / n
        var_x, var_y = sxx - sx * sx / n, syy - sy * sy / n
        denominator = np.sqrt(var_x * var_y)
        return np.where((var_x > 0) & (var_y > 0), cov / denominator, np.nan)


@dataclass(frozen=True, eq=False)
class Bootstrap:
    """Seeded resamples of n eval sequences: `counts[b, i]` is how often sequence i is drawn in
    resample b (n draws with replacement). Empty (no resamples) gives NaN intervals."""

    counts: np.ndarray  # (resamples, n) float64

    @classmethod
    def draw(cls, n_sequences: int, resamples: int, seed: int) -> Bootstrap:
        """`resamples` resamples of `n_sequences` sequences; the same seed gives the same ones."""
        if resamples < 0 or n_sequences < 1:
            raise ValueError(f"need resamples >= 0 and sequences >= 1: {resamples}, {n_sequences}")
        rng = np.random.default_rng([seed, BOOTSTRAP_STREAM])
        picks = rng.integers(0, n_sequences, size=(resamples, n_sequences))
        picks += np.arange(resamples)[:, None] * n_sequences
        counts = np.bincount(picks.ravel(), minlength=resamples * n_sequences)
        return cls(counts.reshape(resamples, n_sequences).astype(np.float64))

    @property
    def resamples(self) -> int:
        return int(self.counts.shape[0])

    def replicates(self, moments: np.ndarray) -> np.ndarray:
        """r of every resample, (resamples,) or (resamples, k) for moments (n, k, 6)."""
        n = moments.shape[0]
        summed = self.counts @ moments.reshape(n, -1)
        return r_from_moments(summed.reshape(self.resamples, *moments.shape[1:]))

    def interval(self, replicates: np.ndarray) -> tuple[float, float]:
        """The percentile interval (CI_LEVEL) of replicates; NaN without resamples."""
        return percentile_interval(replicates)


def percentile_interval(replicates: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """(low, high): the (1 − level)/2 and (1 + level)/2 quantiles of the finite replicates along
    the first axis; NaN when there are none."""
    values = np.asarray(replicates, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1.0 - level) / 2
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def well_estimated(counts: BigramCounts, sequences: np.ndarray, min_count: int) -> np.ndarray:
    """The eval positions (n, T-1) whose bigram estimate rests on enough data: the current token
    occurred at least `min_count` times as a context in train and its bigram was counted (the
    positions of the diagnostic r `bigram_r_well_estimated`)."""
    prev = sequences[:, :-1].astype(np.int64)
    contexts = context_totals(counts)[prev] >= min_count
    return contexts & np.isfinite(bigram_surprisal(counts, sequences))


def unseen_fraction(reference_bits: np.ndarray) -> float:
    """Share of eval positions whose bigram probability is 0 (never counted in training): the
    positions whose surprisal the clipped r clips and the drop-unseen r drops."""
    return float(1.0 - np.isfinite(reference_bits).mean())


def _batches(sequences: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(sequences), batch_size):
        yield sequences[start : start + batch_size]


@torch.no_grad()
def score_mask(
    lm: MaskedLM,
    mask: Mask,
    sequences: torch.Tensor,
    bigram: BigramTarget,
    batch_size: int,
    device: torch.device,
) -> tuple[np.ndarray, float]:
    """Per-token surprisal (bits, shape (n, T-1)) of the model under a hard mask, and its mean
    soft-target bigram cross-entropy (nats) over the same positions."""
    hard = {name: keep.to(device, torch.float32) for name, keep in mask.items()}
    surprisal, bigram_ce, positions = [], 0.0, 0
    for batch in _batches(sequences, batch_size):
        batch = batch.to(device)
        hidden = lm.hidden(batch, hard)[:, :-1]
        current = batch[:, :-1]
        logits = lm.logits(hidden).float()
        log_normaliser = torch.logsumexp(logits, dim=-1)  # shared by both losses
        nll = log_normaliser - logits.gather(-1, batch[:, 1:, None]).squeeze(-1)
        surprisal.append((nll * LOG2E).cpu().numpy())
        ce = log_normaliser - bigram.expected_logit(hidden, current).float()
        bigram_ce += float(ce.sum())
        positions += current.numel()
    return np.concatenate(surprisal), bigram_ce / positions


def _metric_rows(
    model: str, target: str, label: str, metrics: dict[str, float]
) -> list[dict[str, Any]]:
    return [
        {
            "model": model,
            "target": target,
            "lambda": label,
            "lambda_value": lambda_value(label),
            "metric": name,
            "value": float(value),
        }
        for name, value in metrics.items()
    ]


def _block_rows(model: str, target: str, label: str, mask: Mask, lm: MaskedLM) -> list[dict]:
    rows = []
    for entry in block_counts(mask, lm.layout) + head_counts(mask, lm.layout):
        rows.append(
            {
                "model": model,
                "target": target,
                "lambda": label,
                "layer": entry["layer"],
                "kind": entry["kind"],
                "head": entry.get("head"),
                "kept": entry["kept"],
                "size": entry["size"],
                "fraction": entry["kept"] / entry["size"],
                "param": entry["param"],
            }
        )
    return rows


@dataclass(frozen=True)
class Evaluation:
    """What `score_masks` gives: metric rows, block rows and, per (target, λ label), the
    bootstrap replicates of its r values ((resamples, len(replicate_names)), in that order:
    R_METRICS, then each n-gram order's r; no rows without resamples)."""

    metrics: list[dict[str, Any]]
    blocks: list[dict[str, Any]]
    replicates: dict[tuple[str, str], np.ndarray]
    replicate_names: tuple[str, ...] = R_METRICS


@dataclass(frozen=True)
class NgramReference:
    """One n-gram order's surprisal on the eval positions (bits, (n, T-1)): as the bigram r takes
    it (`bits`), and with back-off to the longest seen suffix context (`backoff_bits`)."""

    target: str
    bits: np.ndarray
    backoff_bits: np.ndarray
    seen_context: np.ndarray  # (n, T-1) bool: the n − 1 context tokens occurred in train

    @classmethod
    def of(cls, target: str, tables: list[NgramCounts], sequences: np.ndarray) -> NgramReference:
        bits, seen = ngram_surprisal(tables, sequences)
        if len(tables) >= 3:
            backoff_bits, _ = ngram_surprisal(tables, sequences, backoff=True)
        else:  # orders 1 and 2: the back-off model is the order-n model itself
            backoff_bits = bits
        return cls(target, bits, backoff_bits, seen)

    @property
    def has_backoff(self) -> bool:
        """Whether back-off differs from the order-n model: only from n = 3 on (an unseen bigram
        context already takes the unigram, and a unigram has no context)."""
        return NGRAM_ORDERS[self.target] >= 3

    @property
    def r_metrics(self) -> tuple[str, ...]:
        """The r values it adds (the bigram's clipped and drop-unseen r are R_METRICS')."""
        own = () if self.target == "bigram" else (f"{self.target}_r", f"{self.target}_r_dropinf")
        return (*own, f"{self.target}_r_backoff") if self.has_backoff else own

    def moments(self, bits: np.ndarray) -> list[np.ndarray]:
        """`sequence_moments` of the masked model's `bits` against each of `r_metrics`."""
        finite = np.isfinite(self.bits)
        own = (
            []
            if self.target == "bigram"
            else [
                sequence_moments(bits, clip_infinite(self.bits)),
                sequence_moments(bits, np.where(finite, self.bits, 0.0), finite),
            ]
        )
        if self.has_backoff:
            own.append(sequence_moments(bits, clip_infinite(self.backoff_bits)))
        return own

    def values(self, bits: np.ndarray) -> dict[str, float]:
        """Its r values for the masked model's `bits`, and the unseen-context share."""
        values: dict[str, float] = {}
        if self.target != "bigram":  # bigram_r and bigram_r_dropinf are R_METRICS', as they were
            finite = np.isfinite(self.bits)
            values[f"{self.target}_r"] = pearson(bits, clip_infinite(self.bits))
            values[f"{self.target}_r_dropinf"] = pearson(bits[finite], self.bits[finite])
        if self.has_backoff:
            values[f"{self.target}_r_backoff"] = pearson(bits, clip_infinite(self.backoff_bits))
        values[f"{self.target}_unseen_context_fraction"] = float(1.0 - self.seen_context.mean())
        return values


def score_masks(
    name: str,
    model: torch.nn.Module,
    mask_files: list[MaskFile],
    counts: BigramCounts,
    sequences: np.ndarray,
    batch_size: int,
    device: torch.device,
    identity: dict[str, Any] | None = None,
    resamples: int = 0,
    seed: int = 0,
    min_context_count: int | None = None,
    ngram_tables: dict[str, list[NgramCounts]] | None = None,
) -> Evaluation:
    """Metric rows and block rows for the full model, the empty mask and every mask file (with
    the model's `identity`, mask files trained on other weights are refused), with `resamples`
    seeded bootstrap resamples of the eval sequences behind every r's interval. With
    `min_context_count`, also a diagnostic r over the well-estimated positions only
    (`well_estimated`: `bigram_r_well_estimated` with its interval, the share of positions it
    covers `well_estimated_fraction`, and the count `well_estimated_min_count`). With
    `ngram_tables` (n-gram target -> its tables of orders 1..n), each order's r values (see the
    module docstring)."""
    model = model.to(device).eval()
    lm = MaskedLM(model, counts.vocab_size)
    if int(sequences.max()) >= counts.vocab_size:
        raise UserError(
            f"eval token id {int(sequences.max())} is outside the bigram vocabulary of "
            f"{counts.vocab_size}; rebuild the data stages"
        )
    tokens = torch.from_numpy(sequences.astype(np.int64))
    bigram = BigramTarget.build(counts, lm.unembed, lm.unembed_bias)
    reference_bits = bigram_surprisal(counts, sequences)
    clipped = clip_infinite(reference_bits)
    finite = np.isfinite(reference_bits)
    unseen = unseen_fraction(reference_bits)
    # the smoothed bigram model's loss on the same positions: the bar the full model must clear
    baseline = bigram_baseline_cross_entropy(counts, sequences)["cross_entropy"]
    resampling = Bootstrap.draw(len(sequences), resamples, seed)
    well = (
        None if min_context_count is None else well_estimated(counts, sequences, min_context_count)
    )
    orders = [NgramReference.of(t, tables, sequences) for t, tables in (ngram_tables or {}).items()]
    names = (*R_METRICS, *(name for order in orders for name in order.r_metrics))

    candidates: list[tuple[str, str, Mask]] = [
        (REFERENCE, "neginf", keep_all(lm.layout)),
        (REFERENCE, "inf", keep_none(lm.layout)),
    ]
    candidates += [(m.target, m.label, m.path) for m in mask_files]  # type: ignore[misc]
    metrics: list[dict[str, Any]] = []
    blocks: list[dict[str, Any]] = []
    replicates: dict[tuple[str, str], np.ndarray] = {}
    full_bits: np.ndarray | None = None
    for target, label, source in tqdm(candidates, desc=f"evaluate {name}", unit="mask"):
        mask = load_mask(source, lm.layout, identity)[0] if isinstance(source, Path) else source
        bits, bigram_ce = score_mask(lm, mask, tokens, bigram, batch_size, device)
        if full_bits is None:
            full_bits = bits  # the first candidate is the full model
        kept = sum(int(t.sum()) for t in mask.values())
        loss = float(bits.mean()) / LOG2E
        values = {
            "kept": kept,
            "kept_fraction": kept / lm.n_masked,
            "bigram_r": pearson(bits, clipped),
            "bigram_r_dropinf": pearson(bits[finite], reference_bits[finite]),
            "bigram_cross_entropy": bigram_ce,
            "lm_loss": loss,
            "perplexity": math.exp(loss),
            "mean_surprisal_bits": float(bits.mean()),
            "full_model_r": pearson(bits, full_bits),
            "unseen_fraction": unseen,
        }
        if (target, label) == (REFERENCE, "neginf"):
            values["bigram_baseline_loss"] = baseline
        if well is not None:
            values |= _well_estimated_values(
                bits, reference_bits, well, min_context_count, resampling
            )
        for order in orders:
            values |= order.values(bits)
        if resampling.resamples:
            moments = np.stack(
                [
                    sequence_moments(bits, clipped),
                    sequence_moments(bits, np.where(finite, reference_bits, 0.0), finite),
                    sequence_moments(bits, full_bits),
                    *(m for order in orders for m in order.moments(bits)),
                ],
                axis=1,
            )
            draws = resampling.replicates(moments)  # (resamples, len(names)), in names' order
            replicates[(target, label)] = draws
            for i, metric in enumerate(names):
                values[metric + LOW], values[metric + HIGH] = resampling.interval(draws[:, i])
        else:
            replicates[(target, label)] = np.empty((0, len(names)))
        metrics += _metric_rows(name, target, label, values)
        blocks += _block_rows(name, target, label, mask, lm)
    return Evaluation(metrics, blocks, replicates, names)


def _well_estimated_values(
    bits: np.ndarray,
    reference_bits: np.ndarray,
    well: np.ndarray,
    min_count: int | None,
    resampling: Bootstrap,
) -> dict[str, float]:
    """The diagnostic r over well-estimated positions, its interval and coverage (see
    `score_masks`)."""
    metric = "bigram_r_well_estimated"
    values = {
        metric: pearson(bits[well], reference_bits[well]) if well.any() else math.nan,
        "well_estimated_fraction": float(well.mean()),
        "well_estimated_min_count": float(min_count or 0),
    }
    if resampling.resamples:
        moments = sequence_moments(bits, np.where(well, reference_bits, 0.0), well)
        draws = resampling.replicates(moments)
        values[metric + LOW], values[metric + HIGH] = resampling.interval(draws)
    return values


def evaluate_model(
    name: str,
    model: torch.nn.Module,
    mask_files: list[MaskFile],
    counts: BigramCounts,
    sequences: np.ndarray,
    batch_size: int,
    device: torch.device,
    identity: dict[str, Any] | None = None,
    resamples: int = 0,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`score_masks`' metric rows and block rows."""
    found = score_masks(
        name, model, mask_files, counts, sequences, batch_size, device, identity, resamples, seed
    )
    return found.metrics, found.blocks


METRIC_SCHEMA = MASK_METRICS.schema
BLOCK_SCHEMA = BLOCKS.schema
REPLICATE_SCHEMA = REPLICATES_SCHEMA

# One series of bootstrap replicates: model, step, target, λ label, budget, metric, (resamples,).
ReplicateSeries = tuple[
    str, "int | None", "str | None", "str | None", "int | None", str, np.ndarray
]


def replicate_series(
    model: str,
    replicates: dict[tuple[str, str], np.ndarray],
    step: int | None = None,
    names: tuple[str, ...] = R_METRICS,
) -> list[ReplicateSeries]:
    """The replicate series of every mask's r values (`Evaluation.replicates`, whose columns are
    `names`: `Evaluation.replicate_names`)."""
    return [
        (model, step, target, label, None, metric, draws[:, i])
        for (target, label), draws in replicates.items()
        for i, metric in enumerate(names)
        if draws.size
    ]


def replicate_table(series: list[ReplicateSeries]) -> pa.Table:
    """The replicates artifact (artifacts.REPLICATES_SCHEMA): one row per series × resample, the
    resample index shared by every series (the same `Bootstrap` draws), so A − B is paired."""
    if not series:
        return REPLICATE_SCHEMA.empty_table()
    sizes = [len(entry[-1]) for entry in series]
    names = ("model", "step", "target", "lambda", "budget", "metric")
    columns: dict[str, Any] = {
        name: [entry[i] for entry, size in zip(series, sizes, strict=True) for _ in range(size)]
        for i, name in enumerate(names)
    }
    columns["resample"] = np.concatenate([np.arange(size, dtype=np.int32) for size in sizes])
    columns["value"] = np.concatenate([np.asarray(e[-1], dtype=np.float64) for e in series])
    return pa.table(columns, schema=REPLICATE_SCHEMA)


def eval_sample(sequences: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """A seeded sample of at most `cap` eval sequences, in their original order."""
    from bigram_subnetworks.data.tokenize import sample_rows

    return sequences[sample_rows(len(sequences), cap, seed)]
