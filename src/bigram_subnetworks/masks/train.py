"""Continuous-sparsification mask training (Savarese et al. 2020, as used by Chang & Bergen 2025).

The model stays frozen. Every masked weight w gets a logit s (init 0); the forward pass uses
w · σ(T·s), with the temperature T multiplied by `temp_increase` after every optimizer step, and
the loss is CE(target, masked model) + λ · Σσ(T·s) / N_masked. Weights that are exactly 0 are
forced out.
Training stops once the undecided entries (σ in [0.1, 0.9]) are fewer than `stop_fraction` of the
entries above 0.9, or at `max_steps`; the mask is s > 0. A loss spike that is not recovered
`recovery_margin` steps before the end triggers a new attempt on a new shuffle of the data.
With `max_sequences` below the number of train sequences, a run trains on a uniform sample of them
drawn with its seed (the same seed gives the same sample); every attempt reshuffles that sample.

Targets: the n-gram models `unigram`, `bigram` and `trigram` (the exact soft-target cross-entropy
against P(next | the previous n − 1 tokens), via M = P·W_U per context, see losses.py; for `bigram`
the paper's target) and `full` (the unmasked model's own output distribution: "optimal pruning").

Training is resumable: every `save_every` steps the mask logits, the AdamW state and the loss log
are written (safetensors + JSON, atomically) next to the output; a restarted run continues from
there and ends with the same mask as an uninterrupted run.

Progress goes to the log (INFO) about every PROGRESS_SECONDS: step, loss, kept and undecided
fractions, temperature and seconds per step, so `tail -f` on a job's log shows where it is. The
kept attempt's per-step curve is also written beside the mask as CSV (`lambda-<λ>.curve.csv`,
for `dvc plots`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.func import functional_call
from tqdm.auto import tqdm

from bigram_subnetworks.artifacts import NGRAM_ORDERS, ngram_order
from bigram_subnetworks.config import MaskSettings, StabilitySettings, lambda_value
from bigram_subnetworks.data.bigrams import BigramCounts
from bigram_subnetworks.data.ngrams import NgramCounts, from_bigram_counts, unigram_counts
from bigram_subnetworks.data.tokenize import batch_order, sample_rows
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import atomic_outputs, write_json
from bigram_subnetworks.masks.losses import (
    SOFTCAP_ATTRIBUTE,
    NgramTarget,
    distillation_cross_entropy,
    logits_from_hidden,
    ngram_cross_entropy,
    softcap_logits,
)
from bigram_subnetworks.masks.toolkit import Mask, keep_all, keep_none, save_mask
from bigram_subnetworks.models.layout import Layout, body, layout_of, logit_softcap, unembedding

log = logging.getLogger(__name__)

TARGETS = (*NGRAM_ORDERS, "full")
UNDECIDED_LOW, UNDECIDED_HIGH = 0.1, 0.9
# Part of every run's fingerprint: raise it whenever the trainer changes what a run produces, so
# that a saved state of the old behaviour is never resumed. 2: float32 loss head under bf16
# autocast, the stability check from step 1, a seeded sample of the train sequences.
TRAINING_SEMANTICS = 2
# Tags the seed of the sequence sample apart from the batch orders' seeds [seed, attempt].
SAMPLE_STREAM = 0x5A4D
# A progress line about this often (seconds), at round step numbers (see ProgressLog).
PROGRESS_SECONDS = 30.0
# The columns of a mask's training curve (CSV beside the mask; a row per step of the kept attempt).
CURVE_COLUMNS = ("step", "loss", "kept", "undecided", "temperature")


@dataclass
class TrainingLog:
    """Per-step records of one attempt (plain lists, JSON-ready)."""

    loss: list[float] = field(default_factory=list)  # target cross-entropy (nats)
    penalty: list[float] = field(default_factory=list)  # Σσ(T·s) / N_masked
    kept: list[float] = field(default_factory=list)  # fraction with s > 0
    undecided: list[float] = field(default_factory=list)  # fraction with σ in [0.1, 0.9]
    temperature: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[float]]:
        return {
            "loss": self.loss,
            "penalty": self.penalty,
            "kept": self.kept,
            "undecided": self.undecided,
            "temperature": self.temperature,
        }

    def curve_rows(self) -> list[tuple[int, float, float, float, float]]:
        """One row per recorded step (1-based), in CURVE_COLUMNS order."""
        columns = zip(self.loss, self.kept, self.undecided, self.temperature, strict=True)
        return [(step, *values) for step, values in enumerate(columns, start=1)]


def _nice_ceiling(value: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, 100, ... that is at least `value`."""
    every = 1
    while every < value:
        every = every * 5 // 2 if str(every)[0] == "2" else every * 2
    return every


def _terminal_is_quiet() -> bool:
    """Whether the terminal shows only warnings and errors (`bsn -q`)."""
    handlers = logging.getLogger("bigram_subnetworks").handlers
    return any(
        type(handler) is logging.StreamHandler and handler.level > logging.INFO
        for handler in handlers
    )


class ProgressLog:
    """Logs a training attempt's progress about every `seconds`, at round step numbers.

    The first step after a (re)start is logged at once; from then on a line comes every `every`
    steps, `every` re-estimated at each line from the measured speed as the smallest of 1, 2, 5,
    10, 20, 50, ... steps that take at least `seconds` (every step when steps are slower)."""

    def __init__(
        self,
        label: str,
        total: int,
        start: int,
        seconds: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.label, self.total = label, total
        self.seconds = PROGRESS_SECONDS if seconds is None else seconds
        self.clock = clock
        self.every, self.first = 1, True
        self.last_step, self.last_time = start, clock()

    def step(
        self, step: int, loss: float, kept: float, undecided: float, temperature: float
    ) -> None:
        """Called after every optimizer step (`step`: the steps done so far)."""
        if step % self.every and not self.first:
            return
        self.first = False
        now = self.clock()
        per_step = (now - self.last_time) / max(step - self.last_step, 1)
        log.info(
            "%s: step %d/%d loss %.4f kept %.4f undecided %.4f temperature %.4g (%.3g s/step)",
            self.label,
            step,
            self.total,
            loss,
            kept,
            undecided,
            temperature,
            per_step,
        )
        self.every = _nice_ceiling(self.seconds / per_step) if per_step > 0 else 1
        self.last_step, self.last_time = step, now


@dataclass
class MaskRun:
    """Everything that identifies one mask-training job (its fingerprint guards resumption)."""

    target: str
    lambda_label: str
    settings: MaskSettings
    seed: int
    model_info: dict[str, Any]

    @property
    def lam(self) -> float:
        return lambda_value(self.lambda_label)

    def fingerprint(self) -> str:
        payload = {
            "target": self.target,
            "lambda": self.lambda_label,
            "settings": self.settings.model_dump(mode="json"),
            "seed": self.seed,
            "model": self.model_info,
            "semantics": TRAINING_SEMANTICS,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------ the loss


class MaskedLM:
    """A frozen causal LM whose block weights are multiplied by soft masks σ(T·s).

    Its logits are soft-capped as the family's own LM head does (Gemma-2: c·tanh(z / c)); `unembed`
    then carries c as its `logit_softcap` attribute, so that an NgramTarget built from it takes
    the exact soft-capped n-gram loss."""

    def __init__(self, model: torch.nn.Module, vocab_size: int) -> None:
        self.model = model
        self.layout: Layout = layout_of(model)
        self.body = body(model)
        prefix = next(n for n, m in model.named_modules() if m is self.body) + "."
        self.body_names = {name: name.removeprefix(prefix) for name in self.layout.masked}
        params = dict(model.named_parameters())
        self.weights = {name: params[name].detach() for name in self.layout.masked}
        # Entries that are already zero cannot carry anything: they are forced out.
        self.allowed = {name: w != 0 for name, w in self.weights.items()}
        self.n_masked = self.layout.n_masked
        if unembedding(model).shape[0] < vocab_size:
            raise UserError(
                f"the tokenizer has {vocab_size} tokens but the model only "
                f"{unembedding(model).shape[0]} embedding rows; use the model's own tokenizer"
            )
        self.unembed = unembedding(model).detach()[:vocab_size]
        head_bias = getattr(model.get_output_embeddings(), "bias", None)
        self.unembed_bias = None if head_bias is None else head_bias.detach()[:vocab_size]
        self.logit_softcap = logit_softcap(model)
        if self.logit_softcap is not None:
            setattr(self.unembed, SOFTCAP_ATTRIBUTE, self.logit_softcap)
        config = model.config
        self.max_positions: int | None = getattr(
            config, "max_position_embeddings", getattr(config, "n_positions", None)
        )
        for p in model.parameters():
            p.requires_grad_(False)

    def soft_masks(self, logits: dict[str, torch.Tensor], temperature: float) -> Mask:
        return {
            name: torch.sigmoid(temperature * s) * self.allowed[name] for name, s in logits.items()
        }

    def hidden(self, input_ids: torch.Tensor, masks: Mask) -> torch.Tensor:
        """Final hidden states (after the final norm) with each masked weight times its mask."""
        if self.max_positions is not None and input_ids.shape[-1] > self.max_positions:
            raise UserError(
                f"sequences of {input_ids.shape[-1]} tokens exceed the model's "
                f"{self.max_positions} positions; set data.seq_len to at most {self.max_positions}"
            )
        overrides = {self.body_names[n]: self.weights[n] * m for n, m in masks.items()}
        out = functional_call(self.body, overrides, args=(), kwargs={"input_ids": input_ids})
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the tokenizer's vocabulary, in float32 even under bf16 autocast."""
        logits = logits_from_hidden(hidden, self.unembed, self.unembed_bias)
        return logits if self.logit_softcap is None else softcap_logits(logits, self.logit_softcap)

    @torch.no_grad()
    def teacher_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The unmasked model's logits (the `full` target)."""
        return self.logits(self.body(input_ids=input_ids).last_hidden_state)


def target_loss(
    lm: MaskedLM, target: str, input_ids: torch.Tensor, masks: Mask, ngram: NgramTarget | None
) -> torch.Tensor:
    """Mean cross-entropy of the masked model against the target at every position (nats):
    an n-gram target's (`ngram`, built for it) or the full model's."""
    hidden = lm.hidden(input_ids, masks)
    if ngram_order(target) is not None:
        assert ngram is not None
        return ngram_cross_entropy(hidden, input_ids, lm.unembed, ngram, lm.unembed_bias)
    return distillation_cross_entropy(lm.logits(hidden), lm.teacher_logits(input_ids))


def target_tables(
    target: str, counts: BigramCounts, higher_orders: list[NgramCounts]
) -> list[NgramCounts]:
    """The tables of orders 1..n an n-gram target's loss is built from: orders 1 and 2 from the
    bigram statistics, 3 and up from `higher_orders` (the ngram_stats stage's, in order)."""
    order = ngram_order(target)
    assert order is not None
    tables = [unigram_counts(counts), from_bigram_counts(counts), *higher_orders][:order]
    if [t.order for t in tables] != list(range(1, order + 1)):
        raise UserError(
            f"the {target} target needs the n-gram counts of orders 3..{order} (the ngram_stats "
            "stage's ngrams-<n>.parquet); pass them with --ngram-stats"
        )
    if any(t.vocab_size != counts.vocab_size for t in tables):
        raise UserError(
            f"the {target} target's n-gram counts have another vocabulary than the bigram "
            "statistics; rerun the ngram_stats stage"
        )
    return tables


# ------------------------------------------------------------------------- stopping, checks


def undecided_and_high(soft: Mask) -> tuple[int, int]:
    """Entries with σ in [0.1, 0.9] and entries with σ > 0.9."""
    undecided = sum(
        int(((m >= UNDECIDED_LOW) & (m <= UNDECIDED_HIGH)).sum()) for m in soft.values()
    )
    high = sum(int((m > UNDECIDED_HIGH).sum()) for m in soft.values())
    return undecided, high


def should_stop(undecided: int, high: int, stop_fraction: float) -> bool:
    """The paper's rule: undecided < stop_fraction × decided-in. An empty mask counts as 1 so that
    masks driven to nothing stop too."""
    return undecided < stop_fraction * max(high, 1)


def unrecovered_spike(losses: list[float], settings: StabilitySettings) -> int | None:
    """The first step whose loss spiked (> mean of the previous `window` + abs_jump, or × rel_jump)
    and did not fall back to that mean at least `recovery_margin` steps before the end; None if
    the curve is stable.

    As in the authors' `check_loss_stability`, every step from step 1 on is checked: before a full
    window exists the reference is the mean of all previous losses (at least one)."""
    values = np.asarray(losses, dtype=np.float64)
    n, window = len(values), settings.window
    if n < 2:
        return None
    # means[i - 1] is the mean of values[max(0, i - window) : i], for steps i = 1 .. n - 1.
    means = np.array([values[max(0, i - window) : i].mean() for i in range(1, n)])
    current = values[1:]
    spikes = np.flatnonzero(
        (current > means + settings.abs_jump) | (current > means * settings.rel_jump)
    )
    deadline = n - settings.recovery_margin  # recovery must happen at a step < deadline
    for spike in spikes:
        step = spike + 1
        recovered = np.flatnonzero(values[step + 1 :] <= means[spike])
        if recovered.size == 0 or step + 1 + recovered[0] >= deadline:
            return int(step)
    return None


# ------------------------------------------------------------------------------- resumption


def _state_dir(output: Path) -> Path:
    return output.with_name(f".{output.name}.state")


def _save_state(
    path: Path,
    logits: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
) -> None:
    tensors = {f"logit/{name}": s.detach().cpu().contiguous() for name, s in logits.items()}
    for index, param in enumerate(logits.values()):
        for key, value in optimizer.state.get(param, {}).items():
            tensors[f"adam/{index}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    path.mkdir(parents=True, exist_ok=True)
    with atomic_outputs(path / "state.safetensors", path / "state.json") as (
        tensor_file,
        meta_file,
    ):
        save_file(tensors, tensor_file, metadata={"step": str(meta["step"])})
        write_json(meta, meta_file)


def _load_state(
    path: Path,
    fingerprint: str,
    logits: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any] | None:
    """Restore a saved state of the same job in place; None when there is none (or a stale one)."""
    meta_file, tensor_file = path / "state.json", path / "state.safetensors"
    if not (meta_file.is_file() and tensor_file.is_file()):
        return None
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        with safe_open(tensor_file, framework="pt") as handle:
            tensor_step = (handle.metadata() or {}).get("step")
        tensors = load_file(tensor_file)
    except (json.JSONDecodeError, OSError, RuntimeError, ValueError, SafetensorError) as error:
        log.warning("ignoring unreadable training state in %s (%s)", path, error)
        return None
    if meta.get("fingerprint") != fingerprint or tensor_step != str(meta.get("step")):
        log.info("training state in %s is stale or from other settings; starting over", path)
        return None
    with torch.no_grad():
        for index, (name, s) in enumerate(logits.items()):
            s.copy_(tensors[f"logit/{name}"])
            prefix = f"adam/{index}/"
            state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
            if state:
                device = s.device
                optimizer.state[s] = {
                    k: v.to(device) if k != "step" else v for k, v in state.items()
                }
    return meta


# ---------------------------------------------------------------------------------- training


@dataclass
class Attempt:
    """The outcome of one training attempt."""

    logits: dict[str, torch.Tensor]
    log: TrainingLog
    steps: int
    stopped_early: bool
    spike: int | None
    seconds: float


@dataclass(frozen=True)
class StepStats:
    """What one step records: the target loss (averaged over the micro-batches), the penalty of
    the last micro-batch, and the counts of the soft mask the step's gradients were taken at."""

    loss: float
    penalty: float
    kept: int
    undecided: int
    high: int


def step_autocast(bf16: bool, device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA when asked; nothing otherwise (`bf16` is ignored on a CPU)."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def step_gradients(
    lm: MaskedLM,
    run: MaskRun,
    logits: dict[str, torch.Tensor],
    batch: torch.Tensor,
    temperature: float,
    loss_fn: Callable[[torch.Tensor, Mask], torch.Tensor],
    autocast: AbstractContextManager[Any],
) -> StepStats:
    """The gradients of one step on the mask logits (added to `.grad`; the caller zeroes them
    first and applies the optimizer) and its statistics. `loss_fn(micro_batch, soft_masks)` is the
    target loss, run under `autocast`; the objective adds λ · penalty and is split over
    `grad_accumulation` micro-batches."""
    penalize = math.isfinite(run.lam) and run.lam != 0
    loss_sum = 0.0
    for micro in torch.tensor_split(batch, run.settings.grad_accumulation):
        soft = lm.soft_masks(logits, temperature)
        with autocast:
            loss = loss_fn(micro, soft)
        penalty = sum(m.sum() for m in soft.values()) / lm.n_masked
        objective = loss + run.lam * penalty if penalize else loss
        (objective * (micro.shape[0] / batch.shape[0])).backward()
        loss_sum += float(loss.detach()) * micro.shape[0] / batch.shape[0]
    with torch.no_grad():
        undecided, high = undecided_and_high(soft)
        kept = sum(int(((s > 0) & lm.allowed[n]).sum()) for n, s in logits.items())
    return StepStats(loss_sum, float(penalty.detach()), kept, undecided, high)


def _peek_state(state_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The saved state's metadata if it belongs to this job (it is loaded in full later)."""
    try:
        meta = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return meta if meta.get("fingerprint") == fingerprint else None


def train_attempt(
    lm: MaskedLM,
    run: MaskRun,
    sequences: torch.Tensor,
    ngram: NgramTarget | None,
    attempt: int,
    state_dir: Path,
    device: torch.device,
    previous: list[dict[str, Any]],
) -> Attempt:
    """One attempt of continuous sparsification, resuming from `state_dir` when it holds this
    attempt. `previous` (the records of earlier attempts) is saved with the state."""
    settings = run.settings
    logits = {
        name: torch.zeros(lm.layout.shapes[name], device=device, requires_grad=True)
        for name in lm.layout.masked
    }
    optimizer = torch.optim.AdamW(
        logits.values(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    order = batch_order(
        len(sequences), settings.max_steps, settings.batch_size, [run.seed, attempt]
    )
    fingerprint = run.fingerprint()
    history, start, seconds = TrainingLog(), 0, 0.0
    saved = _peek_state(state_dir, fingerprint)
    if (
        saved is not None
        and saved["attempt"] == attempt
        and _load_state(state_dir, fingerprint, logits, optimizer) is not None
    ):
        history = TrainingLog(**saved["log"])
        start, seconds = saved["step"], saved["seconds"]
        log.info("resuming attempt %d at step %d from %s", attempt + 1, start, state_dir)
    autocast = step_autocast(settings.bf16, device)

    def loss_fn(micro: torch.Tensor, soft: Mask) -> torch.Tensor:
        return target_loss(lm, run.target, micro, soft, ngram)

    began = time.perf_counter() - seconds
    label = f"{run.target} λ={run.lambda_label} attempt {attempt + 1}"
    # A bar on a terminal only (a log file gets the progress lines instead), and none under -q.
    progress = tqdm(
        total=settings.max_steps,
        initial=start,
        desc=f"mask {label}",
        unit="step",
        disable=True if _terminal_is_quiet() else None,
    )
    progress_log = ProgressLog(label, settings.max_steps, start)
    step, stopped = start, False
    while not stopped and step < settings.max_steps:
        temperature = settings.temp_increase**step
        batch = sequences[order[step]].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        stats = step_gradients(lm, run, logits, batch, temperature, loss_fn, autocast)
        history.loss.append(stats.loss)
        history.penalty.append(stats.penalty)
        history.kept.append(stats.kept / lm.n_masked)
        history.undecided.append(stats.undecided / lm.n_masked)
        history.temperature.append(temperature)
        stopped = should_stop(stats.undecided, stats.high, settings.stop_fraction)
        if stopped:  # the mask was already decided before this step: keep it as it is
            break
        optimizer.step()
        step += 1
        progress.update(1)
        progress.set_postfix(
            loss=f"{stats.loss:.3f}", kept=f"{history.kept[-1]:.3f}", refresh=False
        )
        progress_log.step(step, stats.loss, history.kept[-1], history.undecided[-1], temperature)
        if step % settings.save_every == 0 and step < settings.max_steps:
            meta = {
                "fingerprint": fingerprint,
                "attempt": attempt,
                "step": step,
                "seconds": time.perf_counter() - began,
                "log": history.to_dict(),
                "previous": previous,
            }
            _save_state(state_dir, logits, optimizer, meta)
    progress.close()
    elapsed = time.perf_counter() - began
    log.info(
        "%s: %s after %d steps (%.1f s)",
        label,
        "the mask is decided" if stopped else "reached max_steps",
        step,
        elapsed,
    )
    return Attempt(
        logits={name: s.detach() for name, s in logits.items()},
        log=history,
        steps=step,
        stopped_early=stopped,
        spike=unrecovered_spike(history.loss, settings.stability),
        seconds=elapsed,
    )


GIB = 1 << 30


def memory_estimate(
    lm: MaskedLM, micro_batch: int, seq_len: int, teacher: bool, bf16: bool
) -> dict[str, int]:
    """A rough peak of mask-training memory in bytes, by part. Frozen weights; mask state (float32
    logits, their gradient, two AdamW moments and the masked weight copies: 5 × 4 bytes per masked
    entry); activations (per layer and token about 17·d values plus 2.5 attention scores per head
    and position, after Korthikanti et al. 2022); logits (3 vocabulary-sized float32 tensors per
    position, 4 with the full model's own logits as the target)."""
    layout, tokens = lm.layout, micro_batch * seq_len
    value_bytes = 2 if bf16 else 4
    per_token = 17 * layout.d_model + 2.5 * layout.n_heads * seq_len
    return {
        "weights": sum(p.numel() * p.element_size() for p in lm.model.parameters()),
        "mask_state": 5 * 4 * lm.n_masked,
        "activations": int(layout.n_layers * tokens * per_token * value_bytes),
        "logits": tokens * lm.unembed.shape[0] * 4 * (4 if teacher else 3),
    }


def log_memory_estimate(lm: MaskedLM, run: MaskRun, seq_len: int, device: torch.device) -> None:
    """Say, before training, how much memory a step needs (and warn when a GPU looks too small)."""
    settings = run.settings
    micro_batch = math.ceil(settings.batch_size / settings.grad_accumulation)
    bf16 = settings.bf16 and device.type == "cuda"
    parts = memory_estimate(lm, micro_batch, seq_len, run.target == "full", bf16)
    total = sum(parts.values())
    detail = ", ".join(
        f"{name.replace('_', ' ')} {value / GIB:.2f}" for name, value in parts.items()
    )
    log.info(
        "memory estimate: %.2f GiB (%s) per micro-batch of %d", total / GIB, detail, micro_batch
    )
    if device.type == "cuda":
        available = torch.cuda.get_device_properties(device).total_memory
        if total > 0.9 * available:
            log.warning(
                "the estimate exceeds 90%% of the GPU's %.1f GiB; raise masks.grad_accumulation",
                available / GIB,
            )


def training_rows(n_sequences: int, max_sequences: int | None, seed: int) -> np.ndarray:
    """The train sequences (row indices, in corpus order) a run uses: all of them, or above
    `max_sequences` a uniform sample without replacement, seeded by the run's seed: the same seed
    gives the same sample, another seed another. Drawn from its own stream, apart from the batch
    orders; the attempts of a run share the sample and reshuffle it."""
    stream = int(np.random.SeedSequence([seed, SAMPLE_STREAM]).generate_state(1)[0])
    return sample_rows(n_sequences, max_sequences, stream)


def binarize(lm: MaskedLM, logits: dict[str, torch.Tensor]) -> Mask:
    """Keep an entry iff its logit is positive and its weight is not already zero."""
    return {name: ((s > 0) & lm.allowed[name]).cpu() for name, s in logits.items()}


def train_mask(
    model: torch.nn.Module,
    run: MaskRun,
    sequences: np.ndarray,
    counts: BigramCounts | None,
    output: Path,
    device: torch.device,
    higher_orders: list[NgramCounts] | None = None,
) -> tuple[Mask, dict[str, Any]]:
    """Train one mask and write `output` (.safetensors), its log (.json) and its training curve
    (.curve.csv, the kept attempt) atomically.

    λ = −inf keeps every entry and λ = +inf none: these baselines are written without training.
    `counts` is required for the n-gram targets (with `higher_orders`, orders 3..n, for n >= 3);
    its vocabulary cuts the unembedding. Returns the mask and the metadata stored in the mask file
    (deterministic: no timings).
    """
    if run.target not in TARGETS:
        raise UserError(f"target {run.target!r}: unknown; use one of {', '.join(TARGETS)}")
    if math.isnan(run.lam) or (run.lam < 0 and math.isfinite(run.lam)):
        raise UserError(f"lambda {run.lambda_label!r}: must be >= 0, 'inf' or 'neginf'")
    if ngram_order(run.target) is not None and counts is None:
        raise UserError(f"the {run.target} target needs bigram statistics; pass the data folder")
    model = model.to(device).eval()
    vocab_size = counts.vocab_size if counts is not None else unembedding(model).shape[0]
    lm = MaskedLM(model, vocab_size)
    settings = run.settings.model_dump(mode="json")
    metadata: dict[str, Any] = {
        **run.model_info,
        "model_type": lm.layout.arch,
        "target": run.target,
        "lambda": run.lambda_label,
        "seed": run.seed,
        # For the mask card (masks.sharing): how it was trained, and hashes that tell two
        # masks' settings, or whole jobs (settings, seed, weights, target, λ), apart.
        "settings": settings,
        "settings_sha256": hashlib.sha256(
            json.dumps(settings, sort_keys=True).encode()
        ).hexdigest(),
        "run_sha256": run.fingerprint(),
    }
    log_path = output.with_suffix(".json")
    if math.isinf(run.lam):
        mask = keep_all(lm.layout) if run.lam < 0 else keep_none(lm.layout)
        metadata |= {"steps": 0, "attempts": 0, "stable": True}
        _write_outputs(output, log_path, mask, metadata, {"history": []}, TrainingLog())
        return mask, metadata

    if sequences.size == 0:
        raise UserError("no training sequences; check the tokenize stage's output")
    if int(sequences.max()) >= vocab_size:
        raise UserError(
            f"token id {int(sequences.max())} is outside the model's vocabulary of {vocab_size}; "
            "rebuild the data stages with this model's tokenizer"
        )
    rows = training_rows(len(sequences), run.settings.max_sequences, run.seed)
    if len(rows) < len(sequences):
        log.info("training on a seeded sample of %d of %d sequences", len(rows), len(sequences))
    tokens = torch.from_numpy(sequences[rows].astype(np.int64))
    ngram = None
    if counts is not None and ngram_order(run.target) is not None:
        tables = target_tables(run.target, counts, higher_orders or [])
        ngram = NgramTarget.build(tables, lm.unembed, lm.unembed_bias, lm.logit_softcap)
    log_memory_estimate(lm, run, tokens.shape[1], device)
    state_dir = _state_dir(output)
    saved = _peek_state(state_dir, run.fingerprint())
    attempts: list[dict[str, Any]] = saved["previous"] if saved else []
    stability = run.settings.stability
    for attempt in range(len(attempts), stability.attempts):
        result = train_attempt(lm, run, tokens, ngram, attempt, state_dir, device, attempts)
        attempts.append(
            {
                "attempt": attempt,
                "steps": result.steps,
                "stopped_early": result.stopped_early,
                "unrecovered_spike": result.spike,
                "seconds": round(result.seconds, 2),
                **result.log.to_dict(),
            }
        )
        if result.spike is None:
            break
        log.warning(
            "attempt %d: the loss spiked at step %d and did not recover %d steps before the end%s",
            attempt + 1,
            result.spike,
            stability.recovery_margin,
            "; retrying on a new shuffle" if attempt + 1 < stability.attempts else "; keeping it",
        )
    mask = binarize(lm, result.logits)
    metadata |= {
        "steps": result.steps,
        "attempts": len(attempts),
        "stable": result.spike is None,
        "stopped_early": result.stopped_early,
    }
    _write_outputs(output, log_path, mask, metadata, {"history": attempts}, result.log)
    shutil.rmtree(state_dir, ignore_errors=True)
    log.info(
        "%s λ=%s: kept %d of %d (%.4f) after %d steps, %d attempt(s) -> %s",
        run.target,
        run.lambda_label,
        sum(int(t.sum()) for t in mask.values()),
        lm.n_masked,
        sum(int(t.sum()) for t in mask.values()) / lm.n_masked,
        result.steps,
        len(attempts),
        output,
    )
    return mask, metadata


def curve_path(output: Path) -> Path:
    """Where a mask's training curve goes: beside it, `lambda-<λ>.curve.csv`."""
    return output.with_suffix(".curve.csv")


def write_curve(path: Path, history: TrainingLog) -> None:
    """The per-step curve of one attempt as CSV (CURVE_COLUMNS; just the header without steps)."""
    with atomic_outputs(path) as (temp,), temp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CURVE_COLUMNS)
        for step, *values in history.curve_rows():
            writer.writerow([step, *(f"{v:.6g}" for v in values)])


def _write_outputs(
    output: Path,
    log_path: Path,
    mask: Mask,
    metadata: dict[str, Any],
    training: dict[str, Any],
    curve: TrainingLog,
) -> None:
    """The log and the curve first, then the mask: a mask file exists only once they do."""
    with atomic_outputs(log_path) as (temp,):
        write_json({**metadata, **training}, temp)
    write_curve(curve_path(output), curve)
    save_mask(output, mask, metadata)
