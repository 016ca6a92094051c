"""The train_mask stage: one mask for a model key (a model, a checkpoint or a control) × target × λ.

Every mask of the pipeline is trained here, whatever it is for: the main grid, the checkpoint
trajectories and the Table 2 controls are the same job over different model keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bigram_subnetworks.artifacts import split_model_key
from bigram_subnetworks.config import Config
from bigram_subnetworks.errors import UserError

if TYPE_CHECKING:
    from bigram_subnetworks.data.ngrams import NgramCounts


def run_stage(
    cfg: Config,
    *,
    model: str,
    target: str,
    lam: str,
    model_dir: Path,
    tokens_train: Path,
    bigram_stats: Path,
    mask: Path,
    mask_log: Path,
    mask_curve: Path,
    ngram_stats: list[Path] | None = None,
    ngram_meta: list[Path] | None = None,
) -> None:
    """Train the mask of one job and write it (with its training log and curve beside it). An
    n-gram target of order n >= 3 (the train_ngram_mask stage) is given the counts of orders
    3..n as well (`ngram_stats`, each with its JSON in `ngram_meta`)."""
    from bigram_subnetworks.data.bigrams import read_bigram_counts
    from bigram_subnetworks.data.tokenize import read_sequences
    from bigram_subnetworks.masks.train import MaskRun, curve_path, train_mask
    from bigram_subnetworks.models.loading import pick_device
    from bigram_subnetworks.models.variants import load_variant

    if mask_log != mask.with_suffix(".json"):
        raise UserError(f"{mask_log}: the training log goes beside the mask, as {mask.stem}.json")
    if mask_curve != curve_path(mask):
        raise UserError(
            f"{mask_curve}: the training curve goes beside the mask, as {curve_path(mask).name}"
        )
    base, variant = split_model_key(model)
    trust = bool(getattr(cfg.models[base], "trust_remote_code", False))
    network, identity = load_variant(model_dir, variant, trust_remote_code=trust)
    run = MaskRun(target, lam, cfg.masks, cfg.seed, identity)
    counts = read_bigram_counts(bigram_stats)
    higher = read_higher_orders(ngram_stats or [], ngram_meta or [])
    device = pick_device(cfg.device)
    train_mask(network, run, read_sequences(tokens_train), counts, mask, device, higher)


def read_higher_orders(tables: list[Path], metas: list[Path]) -> list[NgramCounts]:
    """The n-gram tables of orders >= 3 a job is given, in order of n; each table's JSON must be
    the one given beside it (the front-ends track both)."""
    from bigram_subnetworks.data.ngrams import read_ngram_counts

    if sorted(path.with_suffix(".json") for path in tables) != sorted(metas):
        raise UserError(
            f"--ngram-meta {' '.join(map(str, metas))}: give each --ngram-stats table's JSON, "
            "the .json beside it"
        )
    return sorted(map(read_ngram_counts, tables), key=lambda counts: counts.order)
