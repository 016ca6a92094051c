"""The continuous-sparsification trainer: stopping and stability rules, baselines, forced-out
weights, determinism, resumption after an interruption, gradient accumulation, two architectures.

The tiny models get a large initialisation so that pruning alone can move their outputs a lot.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import GPT2LMHeadModel, GPTNeoXForCausalLM

import bigram_subnetworks.masks.train as train_module
from bigram_subnetworks.config import MaskSettings, StabilitySettings
from bigram_subnetworks.data.bigrams import BigramCounts, count_bigrams
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.masks.losses import BigramTarget
from bigram_subnetworks.masks.toolkit import load_mask
from bigram_subnetworks.masks.train import (
    MaskedLM,
    MaskRun,
    memory_estimate,
    should_stop,
    train_attempt,
    train_mask,
    unrecovered_spike,
)
from tiny_models import tiny_lm

VOCAB = 40
CPU = torch.device("cpu")
# Trainer tests run on every device this machine has: the CUDA path is covered wherever a GPU is.
DEVICES = [
    pytest.param(torch.device("cpu"), id="cpu"),
    pytest.param(
        torch.device("cuda"),
        id="cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]


def small_neox(seed: int = 0) -> GPTNeoXForCausalLM:
    model = tiny_lm(vocab=VOCAB, ff=32, seed=seed, rotary_pct=0.25, initializer_range=0.5)
    assert sum(p.numel() for p in model.parameters()) < 10_000
    return model


def small_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    model = tiny_lm("gpt2", vocab=VOCAB, seed=seed, initializer_range=0.5)
    assert sum(p.numel() for p in model.parameters()) < 10_000
    return model


@pytest.fixture(scope="module")
def sequences() -> np.ndarray:
    """Sequences from a sparse random bigram process, so the bigram target is learnable."""
    rng = np.random.default_rng(0)
    successors = rng.integers(0, VOCAB, size=(VOCAB, 3))
    rows = np.empty((64, 12), dtype=np.uint32)
    rows[:, 0] = rng.integers(0, VOCAB, size=64)
    for t in range(1, rows.shape[1]):
        rows[:, t] = successors[rows[:, t - 1], rng.integers(0, 3, size=64)]
    return rows


@pytest.fixture(scope="module")
def counts(sequences: np.ndarray) -> BigramCounts:
    return count_bigrams(sequences, VOCAB)


def settings(**overrides: Any) -> MaskSettings:
    base: dict[str, Any] = {
        "lr": 0.05,
        "temp_increase": 1.1,
        "batch_size": 8,
        "max_steps": 30,
        "save_every": 5,
        "stability": {"recovery_margin": 3},
    }
    return MaskSettings.model_validate(base | overrides)


def make_run(target: str = "bigram", lam: str = "1", **overrides: Any) -> MaskRun:
    return MaskRun(target, lam, settings(**overrides), seed=0, model_info={"model": "tiny"})


# ------------------------------------------------------------------------------- pure rules


def test_stop_rule_counts_an_empty_mask_as_decided() -> None:
    assert should_stop(undecided=0, high=0, stop_fraction=0.01)
    assert should_stop(undecided=9, high=1000, stop_fraction=0.01)
    assert not should_stop(undecided=10, high=1000, stop_fraction=0.01)
    assert not should_stop(undecided=1, high=0, stop_fraction=0.01)


def test_stable_curves_pass_the_stability_check() -> None:
    rules = StabilitySettings(window=3, recovery_margin=2)
    assert unrecovered_spike([3.0, 2.9, 2.8, 2.7, 2.6, 2.5, 2.4], rules) is None
    assert unrecovered_spike([1.0, 1.0], rules) is None  # shorter than the window


def test_a_spike_recovered_in_time_is_accepted() -> None:
    rules = StabilitySettings(window=3, recovery_margin=2)
    losses = [2.0, 2.0, 2.0, 3.0, 1.9, 1.9, 1.9, 1.9]  # back below the mean (2.0) one step later
    assert unrecovered_spike(losses, rules) is None


def test_a_spike_recovered_too_late_or_never_is_reported() -> None:
    rules = StabilitySettings(window=3, recovery_margin=2)
    late = [2.0, 2.0, 2.0, 3.0, 2.5, 2.4, 2.3, 1.9, 1.9]  # recovers at step 7; deadline is 7
    assert unrecovered_spike(late, rules) == 3
    never = [2.0, 2.0, 2.0, 2.0, 2.6, 2.6, 2.6, 2.6, 2.6, 2.6]  # +0.6 > abs_jump, stays up
    assert unrecovered_spike(never, rules) == 4


def test_relative_jumps_count_as_spikes() -> None:
    rules = StabilitySettings(window=2, abs_jump=10.0, rel_jump=1.25, recovery_margin=1)
    assert unrecovered_spike([0.1, 0.1, 0.2, 0.2, 0.2], rules) == 2


def test_steps_before_a_full_window_are_checked_against_the_losses_so_far() -> None:
    """As the authors' check does, from step 1 on: the reference is the mean of the (up to
    `window`) previous losses, so a spike at step 3 of a 10-step window counts."""
    rules = StabilitySettings(window=10, recovery_margin=5)
    never = [3.0, 2.9, 2.8, 3.6] + [3.3] * 16  # step 3: 3.6 > 2.9 + 0.25; never back to 2.9
    assert unrecovered_spike(never, rules) == 3
    recovered = [3.0, 2.9, 2.8, 3.6, 2.85] + [2.8 - 0.01 * i for i in range(15)]  # 2.85 <= 2.9
    assert unrecovered_spike(recovered, rules) is None
    late = [3.0, 2.9, 2.8, 3.6] + [3.3] * 11 + [2.5] * 5  # back at step 15 = the deadline (20 - 5)
    assert unrecovered_spike(late, rules) == 3
    first = [2.0, 2.6] + [2.6] * 10  # step 1 against step 0 alone
    assert unrecovered_spike(first, rules) == 1
    assert unrecovered_spike([2.0], rules) is None


# ---------------------------------------------------------------------------------- training


def test_infinite_lambdas_write_the_baselines_without_training(
    tmp_path: Path, sequences: np.ndarray, counts: BigramCounts
) -> None:
    model = small_neox()
    everything, meta = train_mask(
        model, make_run(lam="neginf"), sequences, counts, tmp_path / "all.safetensors", CPU
    )
    nothing, _ = train_mask(
        model, make_run(lam="inf"), sequences, counts, tmp_path / "none.safetensors", CPU
    )
    assert all(bool(t.all()) for t in everything.values())
    assert not any(bool(t.any()) for t in nothing.values())
    assert meta["steps"] == 0
    loaded, stored = load_mask(tmp_path / "all.safetensors")
    assert stored["kept"] == stored["total"] == sum(t.numel() for t in loaded.values())


@pytest.mark.parametrize("device", DEVICES)
def test_training_lowers_the_bigram_loss_and_writes_mask_and_log(
    tmp_path: Path, sequences: np.ndarray, counts: BigramCounts, device: torch.device
) -> None:
    output = tmp_path / "masks" / "lambda-0.safetensors"
    mask, meta = train_mask(small_neox(), make_run(lam="0"), sequences, counts, output, device)
    log = json.loads(output.with_suffix(".json").read_text())
    losses = log["history"][-1]["loss"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05
    for key in ("loss", "penalty", "kept", "undecided", "temperature"):
        assert len(log["history"][-1][key]) == len(losses)
    assert meta["target"] == "bigram" and meta["lambda"] == "0" and meta["seed"] == 0
    stored, stored_meta = load_mask(output)
    assert stored_meta["steps"] == meta["steps"] > 0
    assert all(torch.equal(stored[n], mask[n].cpu()) for n in mask)
    assert not any(p.name.startswith(".") for p in output.parent.iterdir())  # no state left


def test_a_larger_lambda_keeps_fewer_weights(
    tmp_path: Path, sequences: np.ndarray, counts: BigramCounts
) -> None:
    kept = []
    for lam in ("0", "1e1"):
        mask, _ = train_mask(
            small_neox(), make_run(lam=lam), sequences, counts, tmp_path / f"{lam}.safetensors", CPU
        )
        kept.append(sum(int(t.sum()) for t in mask.values()))
    assert kept[1] < kept[0]


@pytest.mark.parametrize("device", DEVICES)
def test_the_full_target_trains_on_the_model_itself(
    tmp_path: Path, sequences: np.ndarray, counts: BigramCounts, device: torch.device
) -> None:
    output = tmp_path / "full.safetensors"
    _, meta = train_mask(small_neox(), make_run("full", "1"), sequences, counts, output, device)
    losses = json.loads(output.with_suffix(".json").read_text())["history"][-1]["loss"]
    assert meta["target"] == "full"
    assert losses[-1] < losses[0]


def test_weights_that_are_zero_are_never_kept(
    tmp_path: Path, sequences: np.ndarray, counts: BigramCounts
) -> None:
    model = small_neox()
    name = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
    with torch.no_grad():
        dict(model.named_parameters())[name][:4] = 0.0
    mask, _ = train_mask(
        model, make_run(lam="0", lr=0.5), sequences, counts, tmp_path / "m.safetensors", CPU
    )
    assert not mask[name][:4].any()
    assert mask[name][4:].any()


def test_the_same_seed_gives_byte_identical_masks(
    tmp_path: Path, sequences: np.ndarray, counts: BigramCounts
) -> None:
    paths = [tmp_path / f"{i}.safetensors" for i in range(2)]
    for path in paths:
        train_mask(small_neox(), make_run(), sequences, counts, path, CPU)
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_an_interrupted_run_resumes_to_the_same_mask(
    tmp_path: Path, sequences: np.ndarray, counts: BigramCounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run(stop_fraction=1e-9)  # never stops early: all 30 steps run
    reference = tmp_path / "reference.safetensors"
    train_mask(small_neox(), run, sequences, counts, reference, CPU)

    interrupted = tmp_path / "interrupted.safetensors"
    real_save = train_module._save_state
    saves: list[int] = []

    def save_then_die(path: Path, logits: Any, optimizer: Any, meta: dict[str, Any]) -> None:
        real_save(path, logits, optimizer, meta)
        saves.append(meta["step"])
        if meta["step"] == 15:
            raise KeyboardInterrupt  # as if killed right after the state at step 15

    monkeypatch.setattr(train_module, "_save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_mask(small_neox(), run, sequences, counts, interrupted, CPU)
    assert not interrupted.exists()  # no mask before training finished
    monkeypatch.setattr(train_module, "_save_state", real_save)

    resumed_steps: list[int] = []
    real_load = train_module._load_state

    def record_load(*args: Any) -> Any:
        meta = real_load(*args)
        resumed_steps.append(meta["step"] if meta else 0)
        return meta

    monkeypatch.setattr(train_module, "_load_state", record_load)
    train_mask(small_neox(), run, sequences, counts, interrupted, CPU)
    assert saves == [5, 10, 15] and resumed_steps == [15]
    first, meta_a = load_mask(reference)
    second, meta_b = load_mask(interrupted)
    assert meta_a == meta_b
    assert all(torch.equal(first[n], second[n]) for n in first)
    logs = [json.loads(p.with_suffix(".json").read_text()) for p in (reference, interrupted)]
    assert logs[0]["history"][0]["loss"] == logs[1]["history"][0]["loss"]


def test_a_state_from_other_settings_is_ignored(
    tmp_path: Path, sequences: np.ndarray, counts: BigramCounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "m.safetensors"
    real_save = train_module._save_state

    def save_then_die(path: Path, logits: Any, optimizer: Any, meta: dict[str, Any]) -> None:
        real_save(path, logits, optimizer, meta)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_mask(small_neox(), make_run(lr=0.05), sequences, counts, output, CPU)
    monkeypatch.undo()

    other = make_run(lr=0.02)
    resumed, _ = train_mask(small_neox(), other, sequences, counts, output, CPU)
    fresh, _ = train_mask(small_neox(), other, sequences, counts, tmp_path / "f.safetensors", CPU)
    assert all(torch.equal(resumed[n], fresh[n]) for n in fresh)


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_accumulation_matches_one_batch(
    sequences: np.ndarray, counts: BigramCounts, device: torch.device
) -> None:
    tokens = torch.from_numpy(sequences.astype(np.int64))
    results = []
    for parts in (1, 2):
        lm = MaskedLM(small_neox().to(device), VOCAB)
        target = BigramTarget.build(counts, lm.unembed)
        run = make_run(max_steps=4, grad_accumulation=parts, stop_fraction=1e-9)
        results.append(train_attempt(lm, run, tokens, target, 0, Path("/nonexistent"), device, []))
    for name, logits in results[0].logits.items():
        torch.testing.assert_close(logits, results[1].logits[name], atol=1e-5, rtol=1e-4)


def test_gpt2_models_train_too(tmp_path: Path, sequences: np.ndarray, counts: BigramCounts) -> None:
    output = tmp_path / "gpt2.safetensors"
    mask, _ = train_mask(small_gpt2(), make_run(lam="0"), sequences, counts, output, CPU)
    assert set(mask) == {
        f"transformer.h.{layer}.{p}.weight"
        for layer in range(2)
        for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    with safe_open(output, framework="pt") as handle:
        assert json.loads(handle.metadata()["target"]) == "bigram"


@pytest.mark.parametrize(
    ("target", "lam", "message"),
    [
        ("fourgram", "1", "target 'fourgram': unknown"),
        ("bigram", "-1", "must be >= 0"),
        ("bigram", "nan", "must be >= 0"),
    ],
)
def test_bad_targets_and_lambdas_are_refused(
    tmp_path: Path,
    sequences: np.ndarray,
    counts: BigramCounts,
    target: str,
    lam: str,
    message: str,
) -> None:
    with pytest.raises(UserError, match=message):
        train_mask(small_neox(), make_run(target, lam), sequences, counts, tmp_path / "m", CPU)


def test_a_vocabulary_larger_than_the_embedding_is_refused(sequences: np.ndarray) -> None:
    with pytest.raises(UserError, match="only 40 embedding rows; use the model's own tokenizer"):
        MaskedLM(small_neox(), VOCAB + 10)


@pytest.mark.parametrize("build", [small_neox, small_gpt2])
def test_sequences_longer_than_the_model_allows_are_refused(
    tmp_path: Path, sequences: np.ndarray, counts: BigramCounts, build: Any
) -> None:
    too_long = np.tile(sequences, (1, 3))  # 36 tokens; the models have 32 positions
    with pytest.raises(UserError, match=r"exceed the model's 32 positions; set data.seq_len"):
        train_mask(build(), make_run(), too_long, counts, tmp_path / "m.safetensors", CPU)
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_memory_estimate_counts_each_part(
    tmp_path: Path, sequences: np.ndarray, counts: BigramCounts, caplog: pytest.LogCaptureFixture
) -> None:
    lm = MaskedLM(small_neox(), VOCAB)
    parts = memory_estimate(lm, micro_batch=8, seq_len=12, teacher=False, bf16=False)
    assert parts["weights"] == 4 * sum(p.numel() for p in lm.model.parameters())
    assert parts["mask_state"] == 20 * lm.n_masked
    assert parts["logits"] == 8 * 12 * VOCAB * 4 * 3
    doubled = memory_estimate(lm, micro_batch=16, seq_len=12, teacher=True, bf16=False)
    assert doubled["activations"] == 2 * parts["activations"]
    assert doubled["logits"] == 2 * parts["logits"] * 4 // 3
    half = memory_estimate(lm, micro_batch=8, seq_len=12, teacher=False, bf16=True)
    assert half["activations"] == parts["activations"] // 2

    caplog.set_level("INFO", logger="bigram_subnetworks.masks.train")
    train_mask(small_neox(), make_run(max_steps=2), sequences, counts, tmp_path / "m", CPU)
    assert any("memory estimate:" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast runs on CUDA only")
def test_bf16_autocast_trains_on_cuda(
    tmp_path: Path, sequences: np.ndarray, counts: BigramCounts
) -> None:
    output = tmp_path / "bf16.safetensors"
    run = make_run(lam="0", bf16=True)
    _, meta = train_mask(small_neox(), run, sequences, counts, output, torch.device("cuda"))
    losses = json.loads(output.with_suffix(".json").read_text())["history"][-1]["loss"]
    assert meta["steps"] > 0 and np.mean(losses[-5:]) < np.mean(losses[:5])


# ------------------------------------------------------------------------ the training sample


def test_training_rows_are_a_seeded_sample() -> None:
    """Under the cap: a sample without replacement in corpus order, the same for the same seed and
    another for another seed; at or above the number of rows: all of them."""
    first = train_module.training_rows(1000, 100, seed=0)
    assert len(first) == len(set(first.tolist())) == 100
    assert np.all(np.diff(first) > 0) and first[-1] < 1000
    assert np.array_equal(train_module.training_rows(1000, 100, seed=0), first)
    assert not np.array_equal(train_module.training_rows(1000, 100, seed=1), first)
    assert not np.array_equal(first, np.arange(100))
    assert np.array_equal(train_module.training_rows(64, None, seed=0), np.arange(64))
    assert np.array_equal(train_module.training_rows(64, 64, seed=3), np.arange(64))


def test_training_uses_the_seeded_sample_of_sequences(
    tmp_path: Path, sequences: np.ndarray, counts: BigramCounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With max_sequences below the number of sequences, the rows fed to training are a seeded
    sample (not the first rows): the same seed feeds the same rows, another seed others."""
    fed: list[np.ndarray] = []
    real_attempt = train_module.train_attempt

    def record(lm: Any, run: Any, tokens: torch.Tensor, *args: Any) -> Any:
        fed.append(tokens.numpy().copy())
        return real_attempt(lm, run, tokens, *args)

    monkeypatch.setattr(train_module, "train_attempt", record)
    for index, seed in enumerate((0, 0, 1)):
        run = MaskRun("bigram", "1", settings(max_steps=2, max_sequences=16), seed, {"m": "t"})
        train_mask(small_neox(), run, sequences, counts, tmp_path / f"{index}.safetensors", CPU)
    assert all(rows.shape == (16, sequences.shape[1]) for rows in fed)
    assert np.array_equal(fed[0], fed[1])
    assert not np.array_equal(fed[0], fed[2])
    assert not np.array_equal(fed[0], sequences[:16])
    for rows, seed in zip((fed[0], fed[2]), (0, 1), strict=True):
        assert np.array_equal(rows, sequences[train_module.training_rows(64, 16, seed)])


def test_the_fingerprint_covers_the_trainer_semantics(monkeypatch: pytest.MonkeyPatch) -> None:
    """A state saved by a trainer of other semantics (another TRAINING_SEMANTICS) is not resumed."""
    run = make_run()
    before = run.fingerprint()
    monkeypatch.setattr(train_module, "TRAINING_SEMANTICS", train_module.TRAINING_SEMANTICS + 1)
    assert run.fingerprint() != before


# ------------------------------------------------------------- progress lines and training curves


class Messages(logging.Handler):
    """Collects the trainer's log messages (the CLI stops propagation at `bigram_subnetworks`)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def trainer_messages() -> Iterator[list[str]]:
    handler = Messages()
    logger = logging.getLogger(train_module.__name__)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(level)


PROGRESS_LINE = re.compile(
    r"bigram λ=1 attempt 1: step (\d+)/6 loss \d+\.\d{4} kept [01]\.\d{4} undecided [01]\.\d{4} "
    r"temperature [\d.e+-]+ \([\d.e+-]+ s/step\)"
)


def test_progress_lines_give_step_loss_kept_undecided_temperature_and_speed(
    tmp_path: Path,
    sequences: np.ndarray,
    counts: BigramCounts,
    monkeypatch: pytest.MonkeyPatch,
    trainer_messages: list[str],
) -> None:
    monkeypatch.setattr(train_module, "PROGRESS_SECONDS", 0.0)  # every step takes longer: all
    run = make_run(stop_fraction=1e-9, max_steps=6)
    train_mask(small_neox(), run, sequences, counts, tmp_path / "m.safetensors", CPU)
    steps = [int(m[1]) for line in trainer_messages if (m := PROGRESS_LINE.fullmatch(line))]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert "bigram λ=1 attempt 1: reached max_steps after 6 steps" in "\n".join(trainer_messages)


def test_progress_lines_come_about_every_interval_at_round_steps() -> None:
    now = [0.0]
    progress = train_module.ProgressLog("x", 1000, 0, seconds=30.0, clock=lambda: now[0])
    logged = []
    for step in range(1, 61):
        now[0] += 7.0  # 7 s per step: a line every 5 steps (35 s), the first at once
        before = progress.last_step
        progress.step(step, 1.0, 0.5, 0.1, 1.0)
        if progress.last_step != before:
            logged.append(step)
    assert logged == [1, *range(5, 61, 5)]
    fast = train_module.ProgressLog("x", 10**6, 100, seconds=30.0, clock=lambda: now[0])
    now[0] += 0.01
    fast.step(101, 1.0, 0.5, 0.1, 1.0)  # resumed at step 100: its first step logs at once
    assert fast.last_step == 101 and fast.every == 5000  # 0.01 s per step: every 5,000 steps
    assert [train_module._nice_ceiling(v) for v in (0.2, 1, 1.5, 3, 5, 7, 11, 4000)] == [
        1, 1, 2, 5, 5, 10, 20, 5000
    ]  # fmt: skip


def read_curve(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_training_curve_is_written_beside_the_mask_for_dvc_plots(
    tmp_path: Path, sequences: np.ndarray, counts: BigramCounts
) -> None:
    output = tmp_path / "lambda-1.safetensors"
    train_mask(small_neox(), make_run(), sequences, counts, output, CPU)
    curve = tmp_path / "lambda-1.curve.csv"
    assert train_module.curve_path(output) == curve
    assert (
        curve.read_text(encoding="utf-8").splitlines()[0] == "step,loss,kept,undecided,temperature"
    )
    rows = read_curve(curve)
    kept_attempt = json.loads(output.with_suffix(".json").read_text())["history"][-1]
    assert [int(r["step"]) for r in rows] == list(range(1, len(kept_attempt["loss"]) + 1))
    for column in ("loss", "kept", "undecided", "temperature"):
        values = [float(r[column]) for r in rows]
        assert np.allclose(values, kept_attempt[column], rtol=1e-5), column
    assert float(rows[0]["temperature"]) == 1.0 and float(rows[0]["kept"]) == 0.0


def test_the_baselines_write_an_empty_training_curve(
    tmp_path: Path, sequences: np.ndarray, counts: BigramCounts
) -> None:
    output = tmp_path / "lambda-inf.safetensors"
    train_mask(small_neox(), make_run(lam="inf"), sequences, counts, output, CPU)
    assert train_module.curve_path(output).read_text(encoding="utf-8") == (
        "step,loss,kept,undecided,temperature\n"
    )


# ---------------------------------------------------------------------------- n-gram targets


def test_ngram_targets_train_on_the_exact_loss_of_their_order(
    tmp_path: Path, sequences: np.ndarray, counts: BigramCounts
) -> None:
    """The first step's recorded loss (every soft mask at σ(0) = 1/2, on the first batch) equals
    the dense reference cross-entropy against the order's P(next | context), with back-off; the
    trigram target needs its order-3 counts and refuses to train without them."""
    from bigram_subnetworks.data.ngrams import count_ngrams
    from bigram_subnetworks.data.tokenize import batch_order
    from bigram_subnetworks.masks.losses import dense_ngram_cross_entropy
    from bigram_subnetworks.masks.train import target_tables, training_rows

    trigrams = count_ngrams(sequences, VOCAB, 3)
    with pytest.raises(UserError, match=r"needs the n-gram counts of orders 3\.\.3"):
        train_mask(small_neox(), make_run("trigram", "0"), sequences, counts, tmp_path / "x", CPU)
    for target, order in (("unigram", 1), ("bigram", 2), ("trigram", 3)):
        run = make_run(target, "0", max_steps=4)
        output = tmp_path / target / "lambda-0.safetensors"
        _, meta = train_mask(small_neox(), run, sequences, counts, output, CPU, [trigrams])
        assert meta["target"] == target
        first = json.loads(output.with_suffix(".json").read_text())["history"][0]["loss"][0]
        tables = target_tables(target, counts, [trigrams])
        assert [t.order for t in tables] == list(range(1, order + 1))
        rows = training_rows(len(sequences), run.settings.max_sequences, run.seed)
        tokens = torch.from_numpy(sequences[rows].astype(np.int64))
        batch = tokens[batch_order(len(tokens), 4, 8, [0, 0])[0]]
        lm = MaskedLM(small_neox(), VOCAB)
        half = {name: 0.5 * lm.allowed[name] for name in lm.layout.masked}
        with torch.no_grad():
            logits = lm.logits(lm.hidden(batch, half))
        expected = float(dense_ngram_cross_entropy(logits, batch, tables))
        assert first == pytest.approx(expected, rel=1e-5), target


def test_the_unigram_and_trigram_losses_fall_with_training(
    tmp_path: Path, sequences: np.ndarray, counts: BigramCounts
) -> None:
    from bigram_subnetworks.data.ngrams import count_ngrams

    trigrams = count_ngrams(sequences, VOCAB, 3)
    for target in ("unigram", "trigram"):
        output = tmp_path / f"{target}.safetensors"
        run = make_run(target, "0")
        train_mask(small_neox(), run, sequences, counts, output, CPU, [trigrams])
        losses = json.loads(output.with_suffix(".json").read_text())["history"][-1]["loss"]
        assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, target
