"""Mask evaluation (surprisals, correlations with their bootstrap intervals, unseen bigrams,
block counts) and λ selection."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from transformers import GPTNeoXForCausalLM

from bigram_subnetworks.analysis.scoring import (
    METRIC_SCHEMA,
    R_METRICS,
    Bootstrap,
    MaskFile,
    bigram_surprisal,
    clip_infinite,
    evaluate_model,
    find_mask,
    index_masks,
    pearson,
    r_from_moments,
    score_masks,
    sequence_moments,
)
from bigram_subnetworks.analysis.select import select_masks
from bigram_subnetworks.data.bigrams import count_bigrams
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.masks.losses import dense_bigram_cross_entropy, dense_bigram_matrix
from bigram_subnetworks.masks.toolkit import save_mask
from bigram_subnetworks.models.layout import layout_of
from tiny_models import tiny_lm

VOCAB = 30


def plain_bigram_surprisal(train: np.ndarray, sequences: np.ndarray) -> np.ndarray:
    """The slow reference: dict counts, unigram back-off for unseen contexts."""
    pairs: Counter[tuple[int, int]] = Counter()
    contexts: Counter[int] = Counter()
    unigram = Counter(train.ravel().tolist())
    for row in train.tolist():
        for cur, nxt in itertools.pairwise(row):
            pairs[cur, nxt] += 1
            contexts[cur] += 1
    out = np.empty((len(sequences), sequences.shape[1] - 1))
    for i, row in enumerate(sequences.tolist()):
        for t, (cur, nxt) in enumerate(itertools.pairwise(row)):
            p = pairs[cur, nxt] / contexts[cur] if contexts[cur] else unigram[nxt] / train.size
            out[i, t] = -math.log2(p) if p > 0 else math.inf
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), vocab=st.integers(2, 12))
def test_bigram_surprisal_matches_a_plain_count(seed: int, vocab: int) -> None:
    rng = np.random.default_rng(seed)
    train = rng.integers(0, vocab, size=(6, 7)).astype(np.uint32)
    held_out = rng.integers(0, vocab + 2, size=(4, 7)).astype(np.uint32)  # unseen ids too
    counts = count_bigrams(train, vocab + 2)
    np.testing.assert_allclose(
        bigram_surprisal(counts, held_out), plain_bigram_surprisal(train, held_out)
    )


def test_clipping_and_pearson() -> None:
    values = np.array([1.0, np.inf, 3.0, np.inf])
    np.testing.assert_array_equal(clip_infinite(values), [1.0, 3.0, 3.0, 3.0])
    with pytest.raises(UserError, match="every bigram surprisal is infinite"):
        clip_infinite(np.array([np.inf, np.inf]))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=200), rng.normal(size=200)
    assert pearson(a, a + b) == pytest.approx(stats.pearsonr(a, a + b).statistic)
    assert math.isnan(pearson(a, np.ones(200)))


# ------------------------------------------------------------------------ evaluating masks


@pytest.fixture(scope="module")
def model_and_data() -> tuple[GPTNeoXForCausalLM, np.ndarray, np.ndarray]:
    model = tiny_lm(vocab=VOCAB, ff=32, positions=16, initializer_range=0.5)
    assert sum(p.numel() for p in model.parameters()) < 10_000
    rng = np.random.default_rng(1)
    return model, rng.integers(0, VOCAB, (40, 10)), rng.integers(0, VOCAB, (12, 10))


def test_evaluation_rows_match_direct_computations(
    tmp_path: Path, model_and_data: tuple[Any, np.ndarray, np.ndarray]
) -> None:
    model, train, held_out = model_and_data
    counts = count_bigrams(train.astype(np.uint32), VOCAB)
    layout = layout_of(model)
    generator = torch.Generator().manual_seed(1)
    half = {n: torch.rand(shape, generator=generator) < 0.5 for n, shape in layout.shapes.items()}
    path = tmp_path / "m" / "bigram" / "lambda-1.safetensors"
    save_mask(path, half, {"lambda": "1"})
    rows, blocks = evaluate_model(
        "m", model, index_masks([path])["m"], counts, held_out, 5, torch.device("cpu")
    )
    table = {(r["target"], r["lambda"], r["metric"]): r["value"] for r in rows}
    assert pa.Table.from_pylist(rows, schema=METRIC_SCHEMA).num_rows == len(rows)

    # The full model's surprisal, computed independently from its own logits.
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(held_out)).logits[:, :-1]
    nll = -torch.log_softmax(logits.double(), -1).gather(
        -1, torch.from_numpy(held_out)[:, 1:, None]
    )
    bits = (nll.squeeze(-1) / math.log(2)).numpy()
    reference = bigram_surprisal(counts, held_out.astype(np.uint32))
    clipped = clip_infinite(reference)
    assert table["reference", "neginf", "bigram_r"] == pytest.approx(pearson(bits, clipped), 1e-5)
    assert table["reference", "neginf", "lm_loss"] == pytest.approx(bits.mean() * math.log(2), 1e-5)
    assert table["reference", "neginf", "full_model_r"] == pytest.approx(1.0)
    dense_ce = dense_bigram_cross_entropy(
        logits.double(), torch.from_numpy(held_out)[:, :-1], dense_bigram_matrix(counts)
    )
    assert table["reference", "neginf", "bigram_cross_entropy"] == pytest.approx(
        float(dense_ce), 1e-5
    )
    assert table["reference", "neginf", "kept_fraction"] == 1.0
    assert table["reference", "inf", "kept"] == 0.0
    finite = np.isfinite(reference)
    assert table["reference", "neginf", "bigram_r_dropinf"] == pytest.approx(
        pearson(bits[finite], reference[finite]), 1e-5
    )
    kept = sum(int(t.sum()) for t in half.values())
    assert table["bigram", "1", "kept"] == kept
    assert table["bigram", "1", "perplexity"] == pytest.approx(
        math.exp(table["bigram", "1", "lm_loss"])
    )
    block_rows = [b for b in blocks if b["lambda"] == "1" and b["head"] is None]
    assert sum(b["kept"] for b in block_rows) == kept
    head_rows = [b for b in blocks if b["lambda"] == "1" and b["head"] is not None]
    assert {b["kind"] for b in head_rows} == {"Q", "K", "V", "O"}


def test_mask_files_are_indexed_by_model_key_and_sorted_by_target_and_lambda() -> None:
    root = Path("results/run/masks")
    given = [
        root / "m" / target / f"lambda-{label}.safetensors"
        for target, label in [("full", "1e1"), ("bigram", "1e2"), ("bigram", "5"), ("bigram", "0")]
    ]
    given.append(root / "m+step-3" / "bigram" / "lambda-0.safetensors")
    index = index_masks(given)
    assert [(m.target, m.label) for m in index["m"]] == [
        ("bigram", "0"),
        ("bigram", "5"),
        ("bigram", "1e2"),
        ("full", "1e1"),
    ]
    assert [m.path for m in index["m+step-3"]] == [given[-1]]
    assert MaskFile.of(given[1]).lam == 100
    assert find_mask(index, "m", "bigram", "5") == given[2]
    with pytest.raises(UserError, match="no full mask with λ=5 of m among the stage's inputs"):
        find_mask(index, "m", "full", "5")
    with pytest.raises(UserError, match="not a mask path of the pipeline"):
        MaskFile.of(Path("elsewhere/mask.safetensors"))


# ------------------------------------------------------------------------------ selection


def metric_table(entries: list[tuple[str, str, float, float]]) -> pa.Table:
    """Rows for (target, λ label, kept, r) of one model 'm' with 1000 masked weights."""
    rows = []
    for target, label, kept, r in entries:
        value = float(label.replace("neginf", "-inf"))
        for metric, v in (("kept", kept), ("kept_fraction", kept / 1000), ("bigram_r", r)):
            rows.append(
                {
                    "model": "m",
                    "target": target,
                    "lambda": label,
                    "lambda_value": value,
                    "metric": metric,
                    "value": v,
                }
            )
    return pa.Table.from_pylist(rows, schema=METRIC_SCHEMA)


def test_selection_takes_the_sparsest_mask_within_tolerance_and_its_pair() -> None:
    table = metric_table(
        [
            ("bigram", "neginf", 1000, 0.70),
            ("bigram", "0", 500, 0.95),
            ("bigram", "1", 200, 0.94),
            ("bigram", "1e1", 50, 0.92),  # within 0.04: selected
            ("bigram", "1e2", 10, 0.80),  # too far
            ("full", "1", 400, 0.6),
            ("full", "1e1", 60, 0.7),  # the sparsest that keeps more than 50
            ("full", "1e2", 40, 0.7),
        ]
    )
    chosen = select_masks(table, ["m"], 0.04)["models"]["m"]
    assert chosen["bigram"]["lambda"] == "1e1" and chosen["bigram"]["kept"] == 50
    assert chosen["optimal"]["lambda"] == "1e1" and chosen["optimal"]["kept"] == 60
    assert chosen["reference"]["lambda"] == "0"
    tight = select_masks(table, ["m"], 0.005)["models"]["m"]
    assert tight["bigram"]["lambda"] == "0" and tight["optimal"] is None


def test_selection_needs_a_lambda_zero_mask() -> None:
    table = metric_table([("bigram", "1", 200, 0.9), ("full", "1", 300, 0.5)])
    with pytest.raises(UserError, match=r"add '0' to lambdas\.bigram"):
        select_masks(table, ["m"], 0.04)


# ------------------------------------------------------------------- bootstrap intervals


def test_bootstrap_resamples_whole_sequences_and_matches_brute_force() -> None:
    """Each resample's r from per-sequence sums equals Pearson's r over the resampled sequences'
    tokens (sequences drawn with replacement, never single tokens)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 9))
    y = 0.6 * x + rng.normal(size=(30, 9))
    y[rng.random(y.shape) < 0.1] = np.inf
    keep = np.isfinite(y)
    resampling = Bootstrap.draw(30, 50, seed=7)
    assert resampling.counts.shape == (50, 30)
    assert np.all(resampling.counts.sum(1) == 30)  # n sequences per resample
    moments = np.stack(
        [sequence_moments(x, y.clip(max=5)), sequence_moments(x, np.where(keep, y, 0), keep)],
        axis=1,
    )
    fast = resampling.replicates(moments)
    for b in range(50):
        rows = np.repeat(np.arange(30), resampling.counts[b].astype(int))
        assert fast[b, 0] == pytest.approx(pearson(x[rows], y[rows].clip(max=5)), abs=1e-12)
        assert fast[b, 1] == pytest.approx(pearson(x[rows][keep[rows]], y[rows][keep[rows]]))
    assert np.array_equal(Bootstrap.draw(30, 50, seed=7).counts, resampling.counts)
    assert not np.array_equal(Bootstrap.draw(30, 50, seed=8).counts, resampling.counts)
    low, high = resampling.interval(fast[:, 0])
    assert low == pytest.approx(np.quantile(fast[:, 0], 0.025))
    assert high == pytest.approx(np.quantile(fast[:, 0], 0.975))
    assert math.isnan(Bootstrap.draw(30, 0, 0).interval(np.empty(0))[0])


def test_sequence_moments_give_pearson_and_resist_large_offsets() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(20, 8)) + 1e6, rng.normal(size=(20, 8)) - 3e5
    y += 0.3 * (x - 1e6)
    assert r_from_moments(sequence_moments(x, y).sum(0)) == pytest.approx(pearson(x, y), 1e-9)
    assert math.isnan(float(r_from_moments(sequence_moments(x, np.ones_like(x)).sum(0))))


def test_every_r_has_a_seeded_interval_and_the_unseen_fraction_beside_it(
    tmp_path: Path, model_and_data: tuple[Any, np.ndarray, np.ndarray]
) -> None:
    model, train, held_out = model_and_data
    counts = count_bigrams(train.astype(np.uint32), VOCAB)
    layout = layout_of(model)
    generator = torch.Generator().manual_seed(2)
    half = {n: torch.rand(shape, generator=generator) < 0.5 for n, shape in layout.shapes.items()}
    path = tmp_path / "m" / "bigram" / "lambda-1.safetensors"
    save_mask(path, half, {"lambda": "1"})
    masks = index_masks([path])["m"]
    found = score_masks("m", model, masks, counts, held_out, 5, torch.device("cpu"), None, 200, 1)
    table = {(r["target"], r["lambda"], r["metric"]): r["value"] for r in found.metrics}
    reference = bigram_surprisal(counts, held_out.astype(np.uint32))
    unseen = 1 - np.isfinite(reference).mean()
    assert unseen > 0  # the held-out data has bigrams the training data never saw
    for mask in (("reference", "neginf"), ("reference", "inf"), ("bigram", "1")):
        assert table[(*mask, "unseen_fraction")] == pytest.approx(unseen)
        for metric in ("bigram_r", "bigram_r_dropinf", "full_model_r"):
            low, high = table[(*mask, metric + "_low")], table[(*mask, metric + "_high")]
            value = table[(*mask, metric)]
            if mask == ("reference", "neginf") and metric == "full_model_r":
                assert low == value == high == pytest.approx(1.0)  # r of a model with itself
                continue
            assert low < value < high and high - low < 1.0
        assert found.replicates[mask].shape == (200, len(R_METRICS))  # one column per r
        for column, metric in enumerate(R_METRICS):
            low, high = table[(*mask, metric + "_low")], table[(*mask, metric + "_high")]
            draws = found.replicates[mask][:, column]
            assert np.quantile(draws, 0.025) == pytest.approx(low)
            assert np.quantile(draws, 0.975) == pytest.approx(high)
    assert pa.Table.from_pylist(found.metrics, schema=METRIC_SCHEMA).num_rows == len(found.metrics)
    again = score_masks("m", model, masks, counts, held_out, 5, torch.device("cpu"), None, 200, 1)
    assert again.metrics == found.metrics  # seeded
    plain, _ = evaluate_model("m", model, masks, counts, held_out, 5, torch.device("cpu"))
    assert not any(r["metric"].endswith(("_low", "_high")) for r in plain)  # no resamples


def test_bootstrap_resamples_is_a_config_key_the_scoring_stages_read() -> None:
    from bigram_subnetworks.config import AnalysisSettings
    from bigram_subnetworks.stages import STAGES

    assert AnalysisSettings().bootstrap_resamples == 1000
    for stage in ("evaluate", "checkpoints", "controls", "residual"):
        assert "analysis.bootstrap_resamples" in STAGES[stage].reads, stage
    assert "analysis.bootstrap_resamples" not in STAGES["ablate"].reads


def test_stored_replicates_give_paired_differences_equal_to_brute_force(
    tmp_path: Path,
    model_and_data: tuple[Any, np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 20 item 3: the evaluate stage writes every r's bootstrap replicates; read back, the
    difference of two masks' r per resample equals brute-force Pearson r on the resampled whole
    sequences (the same resamples for both), and its percentile interval is the paired one."""
    import polars as pl

    from bigram_subnetworks.analysis import evaluate
    from bigram_subnetworks.analysis.scoring import score_mask
    from bigram_subnetworks.config import load_config
    from bigram_subnetworks.masks.losses import BigramTarget
    from bigram_subnetworks.masks.toolkit import keep_all, load_mask
    from bigram_subnetworks.masks.train import MaskedLM
    from bigram_subnetworks.report.summary import Estimate, Replicates

    model, train, held_out = model_and_data
    counts = count_bigrams(train.astype(np.uint32), VOCAB)
    layout = layout_of(model)
    generator = torch.Generator().manual_seed(3)
    half = {n: torch.rand(shape, generator=generator) < 0.5 for n, shape in layout.shapes.items()}
    path = tmp_path / "masks" / "m" / "bigram" / "lambda-1.safetensors"
    save_mask(path, half, {"lambda": "1"})
    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "smoke.yaml")
    resamples = 100
    cfg = cfg.model_copy(
        update={
            "analysis": cfg.analysis.model_copy(
                update={"bootstrap_resamples": resamples, "eval_sequences": None}
            )
        }
    )
    monkeypatch.setattr(
        "bigram_subnetworks.models.loading.load_model", lambda _: (model, {"name": "m"})
    )
    monkeypatch.setattr("bigram_subnetworks.models.loading.model_identity", lambda *_: None)
    monkeypatch.setattr(
        "bigram_subnetworks.data.tokenize.read_sequences", lambda _: held_out.astype(np.uint32)
    )
    monkeypatch.setattr("bigram_subnetworks.data.bigrams.read_bigram_counts", lambda _: counts)
    out = {name: tmp_path / f"{name}.parquet" for name in ("metrics", "blocks", "replicates")}
    evaluate.run_stage(
        cfg,
        models=[tmp_path / "m"],
        masks=[path],
        tokens_eval=tmp_path / "tokens.parquet",
        bigram_stats=tmp_path / "data",
        mask_metrics=out["metrics"],
        blocks=out["blocks"],
        mask_replicates=out["replicates"],
    )
    stored = Replicates.of(pl.from_arrow(pa.parquet.read_table(out["replicates"])))
    full = stored.get("m", "bigram_r", "reference", "neginf")
    masked = stored.get("m", "bigram_r", "bigram", "1")
    assert full is not None and masked is not None and len(full) == resamples
    # brute force: per-token surprisal of both, Pearson r on each resample's whole sequences
    lm = MaskedLM(model, VOCAB)
    tokens = torch.from_numpy(held_out.astype(np.int64))
    target = BigramTarget.build(counts, lm.unembed, lm.unembed_bias)
    cpu = torch.device("cpu")
    bits_full = score_mask(lm, keep_all(layout), tokens, target, 5, cpu)[0]
    bits_masked = score_mask(lm, load_mask(path, layout)[0], tokens, target, 5, cpu)[0]
    reference = clip_infinite(bigram_surprisal(counts, held_out.astype(np.uint32)))
    resampling = Bootstrap.draw(len(held_out), resamples, cfg.seed)
    brute = []
    for b in range(resamples):
        rows = np.repeat(np.arange(len(held_out)), resampling.counts[b].astype(int))
        brute.append(
            pearson(bits_masked[rows], reference[rows]) - pearson(bits_full[rows], reference[rows])
        )
    assert masked - full == pytest.approx(np.array(brute), abs=1e-9)
    metrics = pa.parquet.read_table(out["metrics"]).to_pylist()
    point = {(r["target"], r["lambda"]): r["value"] for r in metrics if r["metric"] == "bigram_r"}
    difference = Estimate(point[("bigram", "1")], draws=masked).minus(
        Estimate(point[("reference", "neginf")], draws=full)
    )
    assert difference.paired
    assert (difference.low, difference.high) == pytest.approx(
        tuple(np.quantile(brute, [0.025, 0.975]))
    )


# ------------------------------------------------------------------------- n-gram orders


def plain_ngram_surprisal(
    train: np.ndarray, sequences: np.ndarray, order: int, backoff: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The slow reference: dict counts of start-padded contexts; an unseen context backs off to
    the unigram, or (`backoff`) to its longest seen suffix. Also: whether the context was seen."""
    start = int(max(train.max(), sequences.max())) + 1_000  # a padding id no token has
    counts: Counter[tuple[int, ...]] = Counter()
    for row in train.tolist():
        padded = [start] * (order - 1) + row
        for t in range(len(row)):
            for n in range(1, order + 1):
                counts[tuple(padded[t + order - n : t + order])] += 1
    totals: Counter[tuple[int, ...]] = Counter()
    for key, value in counts.items():
        totals[key[:-1]] += value
    bits = np.empty((len(sequences), sequences.shape[1] - 1))
    seen = np.empty(bits.shape, dtype=bool)
    for i, row in enumerate(sequences.tolist()):
        padded = [start] * (order - 1) + row
        for t in range(len(row) - 1):
            context = tuple(padded[t + 1 : t + order])
            seen[i, t] = totals[context] > 0
            candidates = [context[k:] for k in range(order - 1)] if backoff else [context]
            used = next((c for c in candidates if totals[c] > 0), ())
            p = counts[(*used, row[t + 1])] / totals[used]
            bits[i, t] = -math.log2(p) if p > 0 else math.inf
    return bits, seen


def full_model_bits(model: Any, held_out: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(held_out)).logits[:, :-1]
    nll = -torch.log_softmax(logits.double(), -1).gather(
        -1, torch.from_numpy(held_out)[:, 1:, None]
    )
    return (nll.squeeze(-1) / math.log(2)).numpy()


def test_every_ngram_order_is_scored_against_a_plain_count_with_and_without_backoff(
    tmp_path: Path, model_and_data: tuple[Any, np.ndarray, np.ndarray]
) -> None:
    from bigram_subnetworks.data.ngrams import count_ngrams
    from bigram_subnetworks.masks.train import target_tables

    model, train, held_out = model_and_data
    train = train.astype(np.uint32)
    counts = count_bigrams(train, VOCAB)
    trigrams = count_ngrams(train, VOCAB, 3)
    tables = {t: target_tables(t, counts, [trigrams]) for t in ("unigram", "bigram", "trigram")}
    layout = layout_of(model)
    generator = torch.Generator().manual_seed(4)
    half = {n: torch.rand(shape, generator=generator) < 0.5 for n, shape in layout.shapes.items()}
    path = tmp_path / "m" / "trigram" / "lambda-1.safetensors"
    save_mask(path, half, {"lambda": "1"})
    masks = index_masks([path])["m"]
    cpu = torch.device("cpu")
    found = score_masks("m", model, masks, counts, held_out, 5, cpu, None, 50, 1, None, tables)
    table = {(r["target"], r["lambda"], r["metric"]): r["value"] for r in found.metrics}
    bits = full_model_bits(model, held_out)
    for target, order in (("unigram", 1), ("bigram", 2), ("trigram", 3)):
        plain, seen = plain_ngram_surprisal(train, held_out, order, backoff=False)
        backed, _ = plain_ngram_surprisal(train, held_out, order, backoff=True)
        finite = np.isfinite(plain)
        expected = {
            f"{target}_r": pearson(bits, clip_infinite(plain)),
            f"{target}_r_dropinf": pearson(bits[finite], plain[finite]),
            f"{target}_unseen_context_fraction": 1 - seen.mean(),
        }
        if order >= 3:  # below, the back-off model is the order-n model itself: no second r
            expected[f"{target}_r_backoff"] = pearson(bits, clip_infinite(backed))
        else:
            assert np.array_equal(backed, plain)
            assert ("reference", "neginf", f"{target}_r_backoff") not in table
        for metric, value in expected.items():
            assert table["reference", "neginf", metric] == pytest.approx(value, 1e-6), metric
        for metric in (m for m in expected if "_r" in m and "unseen" not in m):
            low = table["reference", "neginf", metric + "_low"]
            high = table["reference", "neginf", metric + "_high"]
            assert low <= table["reference", "neginf", metric] <= high
            assert metric in found.replicate_names
    assert table["reference", "neginf", "unigram_unseen_context_fraction"] == 0.0
    trigram_unseen = table["reference", "neginf", "trigram_unseen_context_fraction"]
    assert trigram_unseen > table["reference", "neginf", "bigram_unseen_context_fraction"]
    assert ("trigram", "1", "trigram_r") in table
    assert found.replicates["trigram", "1"].shape == (50, len(found.replicate_names))
    # The bigram metrics are the same numbers with or without the other orders.
    plain = score_masks("m", model, masks, counts, held_out, 5, cpu, None, 50, 1)
    plain_rows = {(r["target"], r["lambda"], r["metric"]): r["value"] for r in plain.metrics}
    assert all(table[key] == value for key, value in plain_rows.items())
    assert plain.replicate_names == R_METRICS


def test_each_ngram_order_gets_its_own_selection() -> None:
    rows = [
        ("bigram", "0", 500, 0.95),
        ("bigram", "1e1", 50, 0.92),
        ("full", "1e1", 60, 0.7),
    ]
    table = metric_table(rows)
    extra = []
    for target, label, value, kept, r in (
        ("trigram", "0", 0.0, 800, 0.90),
        ("trigram", "1e1", 10.0, 300, 0.88),  # within 0.04: selected
        ("trigram", "1e2", 100.0, 30, 0.70),
        ("unigram", "0", 0.0, 100, 0.99),
        ("unigram", "1e1", 10.0, 5, 0.90),  # too far
    ):
        scores = [(f"{target}_r", r)]
        if target == "trigram":  # selected by the r with the back-off model it is trained on
            scores = [(f"{target}_r_backoff", r), (f"{target}_r", r - 0.1 * (label == "1e1"))]
        for metric, v in (("kept", kept), ("kept_fraction", kept / 1000), *scores):
            extra.append(
                {
                    "model": "m",
                    "target": target,
                    "lambda": label,
                    "lambda_value": value,
                    "metric": metric,
                    "value": v,
                }
            )
    table = pa.concat_tables([table, pa.Table.from_pylist(extra, schema=METRIC_SCHEMA)])
    chosen = select_masks(table, ["m"], 0.04)["models"]["m"]
    orders = chosen["orders"]
    assert list(orders) == ["unigram", "bigram", "trigram"]
    assert orders["bigram"] == {
        "lambda": chosen["bigram"]["lambda"],
        "kept": chosen["bigram"]["kept"],
        "kept_fraction": chosen["bigram"]["kept_fraction"],
        "r": chosen["bigram"]["bigram_r"],
    }
    assert orders["trigram"]["lambda"] == "1e1" and orders["trigram"]["r"] == 0.88
    assert orders["unigram"]["lambda"] == "0" and orders["unigram"]["kept"] == 100
    kept_rows = [
        row for row in table.to_pylist() if (row["target"], row["lambda"]) != ("trigram", "0")
    ]
    no_zero = pa.Table.from_pylist(kept_rows, schema=METRIC_SCHEMA)
    with pytest.raises(UserError, match=r"add '0' to lambdas\.trigram"):
        select_masks(no_zero, ["m"], 0.04)
