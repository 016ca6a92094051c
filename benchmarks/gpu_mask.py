"""GPU mask-training benchmark: our mask step on Pythia-shaped models against ordinary training.

For each model shape and dtype, in the same run, on the same batches (median ms per step):

  (a) plain     forward + backward + AdamW over all weights of the model (ordinary training);
  (b) bigram    one step of the project's trainer with the bigram target: `step_gradients` from
                masks/train.py (soft masks σ(T·s), the exact loss via M = P·W_U from
                masks/losses.py, λ·penalty, backward, the step's statistics) and AdamW on the
                mask logits, exactly as `train_attempt` runs it;
  (c) full      the same step with the full-model (distillation) target;
  (d) reference the same step, but the loss is built the way the paper's code builds it: a dense
                (batch, seq, vocab) bigram target filled on the CPU every step (mask_step.py's
                `ReferenceTable`), copied to the device, then soft-target cross-entropy.

Models are randomly initialised GPT-NeoX models with the real Pythia hyperparameters (nothing is
downloaded); the bigram table is a seeded synthetic one of realistic density. Also reported: peak
device memory per mode against the trainer's `memory_estimate`, the projected time of one mask
(15,000 steps, the trainer's state saves and the M = P·W_U build), model FLOP utilisation
(6 × parameters × tokens per step against --peak-tflops), and (d)/(b).

Before timing, (b)'s and (d)'s losses are compared on the same batch and soft masks; a mismatch
makes the exit code 1 (after every result is printed and written). Targets are reported only.

    .venv/bin/python benchmarks/gpu_mask.py [--shapes 160m,410m,1b] [--dtypes fp32,bf16] [--json P]
    .venv/bin/python benchmarks/gpu_mask.py --shapes tiny --device cpu    # seconds, on a CPU
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import itertools
import json
import math
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigram_subnetworks.config import MaskSettings
from bigram_subnetworks.data.bigrams import BigramCounts
from bigram_subnetworks.masks import train
from bigram_subnetworks.masks.losses import BigramTarget
from bigram_subnetworks.masks.toolkit import Mask
from bigram_subnetworks.masks.train import (
    MaskedLM,
    MaskRun,
    memory_estimate,
    should_stop,
    step_autocast,
    step_gradients,
    target_loss,
)
from bigram_subnetworks.models.loading import tune_cpu

GIB = 1 << 30
MODES = ("plain", "bigram", "full", "reference")
LABELS = {"plain": "(a) plain", "bigram": "(b) bigram", "full": "(c) full", "reference": "(d) ref"}
DEFAULT_PEAK_TFLOPS = {"bf16": 989.0, "fp32": 67.0}  # H100 SXM dense: bf16 tensor cores; fp32
TARGET_MINUTES = 20.0  # one 15,000-step Pythia-1B bigram mask on one H100
TARGET_REF_OVER_OURS = 5.0  # (d)/(b) at 1B
TARGET_ESTIMATE = 0.2  # |peak / memory_estimate − 1|
LOSS_TOLERANCE = {"fp32": 1e-4, "bf16": 2e-3}  # relative, (b) against (d) on the same batch


@dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    d_model: int
    heads: int
    embedding_rows: int  # the model's (padded) vocabulary
    vocab: int  # the tokenizer's vocabulary = the bigram table's size


SHAPES = {
    # A few-second CPU smoke test of every code path.
    "tiny": Shape("tiny", 2, 64, 4, 1024, 1000),
    # Pythia (Biderman et al. 2023): 50,304 embedding rows, a 50,277-token tokenizer.
    "160m": Shape("160m", 12, 768, 12, 50304, 50277),
    "410m": Shape("410m", 24, 1024, 16, 50304, 50277),
    "1b": Shape("1b", 16, 2048, 8, 50304, 50277),
}


def _reference_table_class() -> Any:
    """`ReferenceTable` from mask_step.py next to this file: one definition of the reference."""
    path = Path(__file__).with_name("mask_step.py")
    spec = importlib.util.spec_from_file_location("_bsn_mask_step_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module.ReferenceTable


def build_model(shape: Shape, device: torch.device) -> torch.nn.Module:
    """A randomly initialised Pythia-shaped GPT-NeoX (fp32 weights), built on the device."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=shape.embedding_rows,
        hidden_size=shape.d_model,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=4 * shape.d_model,
        max_position_embeddings=2048,
        rotary_pct=0.25,
        rotary_emb_base=10000,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    torch.manual_seed(0)
    with device:
        model = GPTNeoXForCausalLM(config)
    return model.eval()


def zipf_ids(vocab: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Token ids by frequency rank (a seeded permutation) and the Zipf law P(rank k) ∝ k^-1.1."""
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    zipf = ranks**-1.1 / np.sum(ranks**-1.1)
    return rng.permutation(vocab), zipf


def synthetic_counts(
    vocab: int, draws_per_context: int, seed: int, n_sequences: int = 500_000
) -> BigramCounts:
    """A seeded bigram table of realistic density, as `count_bigrams` would return it.

    Context c (Zipf rank r) gets ⌊draws · V · r^-0.55 / Σ⌋ successor draws from the same Zipf law
    (frequent contexts have many successor types, rare ones few); the rarest 0.5% get none and
    back off to the unigram. Counts are draw multiplicities; `n_sequences` start-context pairs
    are added, and the unigram counts are the sums over contexts, as in real statistics.
    """
    rng = np.random.default_rng(seed)
    ids, zipf = zipf_ids(vocab, rng)
    weight = zipf**0.5
    draws = np.floor(draws_per_context * vocab * weight / weight.sum()).astype(np.int64)
    draws[math.ceil(vocab * 0.995) :] = 0
    prev = np.repeat(ids, draws).astype(np.uint64)
    nxt = ids[rng.choice(vocab, size=prev.size, p=zipf)].astype(np.uint64)
    start = ids[rng.choice(vocab, size=n_sequences, p=zipf)].astype(np.uint64)
    size = np.uint64(vocab)
    keys = np.concatenate([prev * size + nxt, size * size + start])
    keys, count = np.unique(keys, return_counts=True)
    pair_prev, pair_next = np.divmod(keys, size)
    unigram = np.bincount(pair_next.astype(np.int64), weights=count, minlength=vocab)
    return BigramCounts(
        prev=pair_prev.astype(np.uint32),
        next=pair_next.astype(np.uint32),
        count=count.astype(np.uint64),
        unigram=unigram.astype(np.uint64),
        vocab_size=vocab,
        n_sequences=n_sequences,
    )


def synthetic_batches(
    counts: BigramCounts, n: int, batch: int, seq_len: int, seed: int
) -> list[torch.Tensor]:
    """`n` CPU batches of Zipf tokens; the first has 3 unseen contexts (the back-off path)."""
    rng = np.random.default_rng(seed + 1)
    ids, zipf = zipf_ids(counts.vocab_size, np.random.default_rng(seed))  # the table's ranking
    tokens = ids[rng.choice(counts.vocab_size, size=(n, batch, seq_len), p=zipf)]
    seen = np.zeros(counts.vocab_size, dtype=bool)
    seen[counts.prev[counts.prev < counts.vocab_size]] = True
    unseen = np.flatnonzero(~seen)[:3]
    tokens[0, 0, : unseen.size] = unseen
    return [torch.from_numpy(t.astype(np.int64)) for t in tokens]


# ------------------------------------------------------------------------------- measuring


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Device:
    """Synchronisation and peak-memory probes (no-ops and None on a CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int | None:
        return int(torch.cuda.max_memory_allocated(self.device)) if self.cuda else None

    def name(self) -> str:
        if self.cuda:
            props = torch.cuda.get_device_properties(self.device)
            return f"{props.name} ({props.total_memory / GIB:.0f} GiB)"
        return f"{cpu_name()}, {torch.get_num_threads()} torch threads"


def time_steps(step: Callable[[], float], steps: int, warmup: int, dev: Device) -> dict[str, Any]:
    """Median milliseconds per step after `warmup` steps, every timing and the last loss."""
    loss = float("nan")
    for _ in range(warmup):
        loss = step()
    times = []
    for _ in range(steps):
        dev.sync()
        began = time.perf_counter()
        loss = step()
        dev.sync()
        times.append((time.perf_counter() - began) * 1e3)
    return {"ms": statistics.median(times), "ms_all": times, "loss": loss}


def mask_logits(lm: MaskedLM, device: torch.device) -> dict[str, torch.Tensor]:
    """The trainer's initial mask logits: zeros, one per masked weight."""
    return {
        name: torch.zeros(lm.layout.shapes[name], device=device, requires_grad=True)
        for name in lm.layout.masked
    }


class MaskMode:
    """One mask-training mode: the trainer's step with a given target loss."""

    def __init__(
        self,
        lm: MaskedLM,
        run: MaskRun,
        batches: list[torch.Tensor],
        dev: Device,
        loss_fn: Callable[[torch.Tensor, Mask], torch.Tensor],
    ) -> None:
        self.lm, self.run, self.batches, self.dev, self.loss_fn = lm, run, batches, dev, loss_fn
        settings = run.settings
        self.logits = mask_logits(lm, dev.device)
        self.optimizer = torch.optim.AdamW(
            self.logits.values(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.autocast = step_autocast(settings.bf16, dev.device)
        self.counter = itertools.count()

    def step(self) -> float:
        """What one iteration of `train_attempt` does (less the progress bar and state saves)."""
        settings, index = self.run.settings, next(self.counter)
        temperature = settings.temp_increase**index
        batch = self.batches[index % len(self.batches)].to(self.dev.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        stats = step_gradients(
            self.lm, self.run, self.logits, batch, temperature, self.loss_fn, self.autocast
        )
        should_stop(stats.undecided, stats.high, settings.stop_fraction)  # timed, not obeyed
        self.optimizer.step()
        return stats.loss

    def time_save(self, directory: Path) -> float:
        """Seconds for one of the trainer's resumable state saves (logits + AdamW state)."""
        meta = {"fingerprint": "benchmark", "attempt": 0, "step": 1, "seconds": 0.0, "log": {}}
        self.dev.sync()
        began = time.perf_counter()
        train._save_state(directory / "state", self.logits, self.optimizer, meta)
        seconds = time.perf_counter() - began
        shutil.rmtree(directory / "state", ignore_errors=True)
        return seconds


class Reference:
    """(d)'s loss: the dense target built on the CPU, copied to the device, soft-target CE."""

    def __init__(self, table: Any, lm: MaskedLM, dev: Device) -> None:
        self.table, self.lm, self.dev = table, lm, dev
        self.build_ms: list[float] = []
        self.copy_ms: list[float] = []

    def __call__(self, micro: torch.Tensor, soft: Mask) -> torch.Tensor:
        began = time.perf_counter()
        dense = torch.from_numpy(self.table.dense_target(micro.cpu().numpy())).float()
        built = time.perf_counter()
        target = dense.to(self.dev.device)
        self.dev.sync()
        self.build_ms.append((built - began) * 1e3)
        self.copy_ms.append((time.perf_counter() - built) * 1e3)
        logits = self.lm.logits(self.lm.hidden(micro, soft))
        vocab = target.shape[-1]
        return torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, vocab), target.reshape(-1, vocab)
        )


def guarded(name: str, label: str, work: Callable[[], dict[str, Any]], dev: Device) -> dict:
    """Run one measurement; a CUDA out-of-memory error is reported and the run goes on."""
    try:
        return {"status": "ok", **work()}
    except torch.cuda.OutOfMemoryError as error:
        message = str(error).splitlines()[0]
        print(f"  {name} {label}: CUDA out of memory ({message}); continuing", file=sys.stderr)
        return {"status": f"oom: {message}"}
    finally:
        dev.reset()


def flops_per_step(params: int, tokens: int) -> float:
    return 6.0 * params * tokens


def measure_shape(
    shape: Shape,
    dtypes: list[str],
    args: argparse.Namespace,
    dev: Device,
    counts: BigramCounts,
    table: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every mode of one shape in every dtype; the per-shape setup costs on the side."""
    built = time.perf_counter()
    model = build_model(shape, dev.device)
    setup: dict[str, Any] = {"model_build_s": time.perf_counter() - built}
    batches = synthetic_batches(counts, args.batches, args.batch, args.seq_len, args.seed)
    lm = MaskedLM(model, shape.vocab)  # freezes the weights
    began = time.perf_counter()
    bigram = BigramTarget.build(counts, lm.unembed, lm.unembed_bias).to(torch.device("cpu"))
    setup["bigram_target_build_s"] = time.perf_counter() - began
    rows = {d: mask_modes(lm, shape, d, args, dev, bigram, table, batches, setup) for d in dtypes}
    # (a) last: its AdamW changes the weights, which M = P·W_U and the loss check rely on.
    del lm, bigram
    dev.reset()
    for p in model.parameters():
        p.requires_grad_(True)
    for dtype in dtypes:
        plain = functools.partial(plain_mode, model, dtype, args, dev, batches)
        rows[dtype]["modes"]["plain"] = guarded(shape.name, f"{dtype} plain", plain, dev)
    return [derive(rows[d], setup, args) for d in dtypes], setup


def mask_modes(
    lm: MaskedLM,
    shape: Shape,
    dtype: str,
    args: argparse.Namespace,
    dev: Device,
    bigram_cpu: BigramTarget,
    table: Any,
    batches: list[torch.Tensor],
    setup: dict[str, Any],
) -> dict[str, Any]:
    """The loss check and modes (b), (c), (d) in one dtype (M is moved to the device for the
    check and (b) only); times one state save into `setup` on first use."""
    device = dev.device
    row: dict[str, Any] = {
        "shape": shape.name,
        "dtype": dtype,
        "params": sum(p.numel() for p in lm.model.parameters()),
        "masked_params": lm.n_masked,
        "vocab": shape.vocab,
        "embedding_rows": shape.embedding_rows,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "tokens": args.batch * args.seq_len,
        "modes": {},
    }
    settings = MaskSettings(batch_size=args.batch, bf16=dtype == "bf16")
    runs = {t: MaskRun(t, "1", settings, seed=args.seed, model_info={}) for t in train.TARGETS}
    reference = Reference(table, lm, dev)
    modes = row["modes"]
    bigram: BigramTarget | None = None

    def check() -> dict[str, Any]:
        nonlocal bigram
        bigram = bigram_cpu.to(device)
        torch.manual_seed(args.seed)
        logits = {n: torch.randn(s, device=device) for n, s in lm.layout.shapes.items()}
        soft = lm.soft_masks(logits, 1.0)
        batch = batches[0].to(device)
        with torch.no_grad(), step_autocast(dtype == "bf16", device):
            ours = float(target_loss(lm, "bigram", batch, soft, bigram))
            dense = float(reference(batch, soft))
        reference.build_ms.clear()
        reference.copy_ms.clear()
        tolerance = LOSS_TOLERANCE[dtype] * max(1.0, abs(dense))
        return {
            "ours": ours,
            "reference": dense,
            "abs_diff": abs(ours - dense),
            "tolerance": tolerance,
            "ok": bool(abs(ours - dense) <= tolerance),
        }

    def timed(loss_fn: Callable[[torch.Tensor, Mask], torch.Tensor], target: str) -> dict:
        mode = MaskMode(lm, runs[target], batches, dev, loss_fn)
        result = time_steps(mode.step, args.steps, args.warmup, dev)
        result["peak_bytes"] = dev.peak()
        if args.save_every and "save_s" not in setup:
            with tempfile.TemporaryDirectory(prefix="gpu_mask_state_") as directory:
                setup["save_s"] = mode.time_save(Path(directory))
        return result

    def ours(micro: torch.Tensor, soft: Mask) -> torch.Tensor:
        return target_loss(lm, "bigram", micro, soft, bigram)

    def full(micro: torch.Tensor, soft: Mask) -> torch.Tensor:
        return target_loss(lm, "full", micro, soft, None)

    row["loss_check"] = guarded(shape.name, f"{dtype} loss check", check, dev)
    if bigram is not None:
        modes["bigram"] = guarded(shape.name, dtype, lambda: timed(ours, "bigram"), dev)
        bigram = None  # the other modes run without M, as the trainer does
    else:
        modes["bigram"] = {"status": "skipped: no bigram target (see the loss check)"}
    dev.reset()
    modes["full"] = guarded(shape.name, dtype, lambda: timed(full, "full"), dev)
    modes["reference"] = guarded(shape.name, dtype, lambda: timed(reference, "bigram"), dev)
    if reference.build_ms:
        row["dense_target_build_ms"] = statistics.median(reference.build_ms)
        row["dense_target_copy_ms"] = statistics.median(reference.copy_ms)
    for target in ("bigram", "full"):
        estimate = memory_estimate(
            lm, args.batch, args.seq_len, target == "full", settings.bf16 and dev.cuda
        )
        modes[target]["estimate_bytes"] = sum(estimate.values())
    return row


def plain_mode(
    model: torch.nn.Module,
    dtype: str,
    args: argparse.Namespace,
    dev: Device,
    batches: list[torch.Tensor],
) -> dict[str, Any]:
    """(a): ordinary training of every weight, with the trainer's autocast for the dtype."""
    device = dev.device
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    autocast = step_autocast(dtype == "bf16", device)
    counter = itertools.count()

    def plain() -> float:
        batch = batches[next(counter) % len(batches)].to(device, non_blocking=True)
        with autocast:
            loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    result = time_steps(plain, args.steps, args.warmup, dev)
    result["peak_bytes"] = dev.peak()
    optimizer.zero_grad(set_to_none=True)
    return result


def derive(row: dict[str, Any], setup: dict[str, Any], args: argparse.Namespace) -> dict:
    """Ratios, FLOP utilisation, memory against the estimate and the projected mask time."""
    modes = row["modes"]
    ms = {m: modes[m].get("ms") if m in modes else None for m in MODES}
    peak_tflops = args.peak_tflops[row["dtype"]]
    flops = flops_per_step(row["params"], row["tokens"])
    for name in MODES:
        mode = modes.setdefault(name, {"status": "not run"})
        if ms[name]:
            mode["tflops"] = flops / (ms[name] / 1e3) / 1e12
            mode["mfu"] = mode["tflops"] / peak_tflops
        peak, estimate = mode.get("peak_bytes"), mode.get("estimate_bytes")
        if peak and estimate:
            mode["peak_over_estimate"] = peak / estimate

    def ratio(a: str, b: str) -> float | None:
        return ms[a] / ms[b] if ms[a] and ms[b] else None

    row["ratios"] = {
        "bigram_over_plain": ratio("bigram", "plain"),
        "full_over_plain": ratio("full", "plain"),
        "reference_over_plain": ratio("reference", "plain"),
        "reference_over_bigram": ratio("reference", "bigram"),
    }
    saves = (args.max_steps - 1) // args.save_every if args.save_every else 0
    row["projection"] = {}
    for target in ("bigram", "full"):
        if not ms[target]:
            continue
        steps_s = args.max_steps * ms[target] / 1e3
        saves_s = saves * setup.get("save_s", 0.0)
        build_s = setup["bigram_target_build_s"] if target == "bigram" else 0.0
        row["projection"][target] = {
            "steps": args.max_steps,
            "steps_hours": steps_s / 3600,
            "saves": saves,
            "saves_hours": saves_s / 3600,
            "bigram_target_hours": build_s / 3600,
            "hours": (steps_s + saves_s + build_s) / 3600,
        }
    return row


# ---------------------------------------------------------------------------------- report


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def targets(rows: list[dict[str, Any]], device_name: str) -> list[dict[str, Any]]:
    """Every target, per row where it applies; `met` is None where nothing was measured."""
    results = []
    h100 = "H100" in device_name
    for row in rows:
        where = f"{row['shape']} {row['dtype']}"
        if row["shape"] == "1b":
            projection = row["projection"].get("bigram")
            minutes = projection["hours"] * 60 if projection else None
            results.append(
                {
                    "target": f"15,000-step Pythia-1B bigram mask < {TARGET_MINUTES:.0f} min "
                    "on one H100",
                    "where": where,
                    "value": minutes,
                    "unit": "min",
                    "met": None if minutes is None else minutes < TARGET_MINUTES,
                    "note": "" if h100 else f"measured on {device_name}, not an H100",
                }
            )
            value = row["ratios"]["reference_over_bigram"]
            results.append(
                {
                    "target": f"(d)/(b) >= {TARGET_REF_OVER_OURS:.0f} at 1B",
                    "where": where,
                    "value": value,
                    "unit": "x",
                    "met": None if value is None else value >= TARGET_REF_OVER_OURS,
                    "note": "",
                }
            )
        for target in ("bigram", "full"):
            value = row["modes"][target].get("peak_over_estimate")
            results.append(
                {
                    "target": f"memory estimate within {TARGET_ESTIMATE:.0%} of the measured peak",
                    "where": f"{where} {LABELS[target]}",
                    "value": value,
                    "unit": "x the estimate",
                    "met": None if value is None else abs(value - 1) <= TARGET_ESTIMATE,
                    "note": "" if value is not None else "no device peak: a CPU run or an OOM",
                }
            )
    return results


def report(
    rows: list[dict[str, Any]], checks: list[dict[str, Any]], args: argparse.Namespace
) -> None:
    header = (
        f"{'shape':<5} {'dtype':<5} {'(a) plain':>10} {'(b) bigram':>11} {'b/a':>5} "
        f"{'(c) full':>9} {'c/a':>5} {'(d) ref':>9} {'d/a':>6} {'d/b':>6} "
        f"{'target':>8} {'copy':>7}  loss (b) vs (d)"
    )
    print("\nms per step (median)")
    print(header)
    print("-" * len(header))
    for row in rows:
        ms = {m: row["modes"][m].get("ms") for m in MODES}
        r, check = row["ratios"], row["loss_check"]
        agree = (
            f"{check['ours']:.5f} vs {check['reference']:.5f} {'ok' if check['ok'] else 'MISMATCH'}"
            if "ok" in check
            else check["status"]
        )
        print(
            f"{row['shape']:<5} {row['dtype']:<5} {fmt(ms['plain'], '>8.1f')}ms "
            f"{fmt(ms['bigram'], '>9.1f')}ms {fmt(r['bigram_over_plain'], '>5.2f')} "
            f"{fmt(ms['full'], '>7.1f')}ms {fmt(r['full_over_plain'], '>5.2f')} "
            f"{fmt(ms['reference'], '>7.1f')}ms {fmt(r['reference_over_plain'], '>6.2f')} "
            f"{fmt(r['reference_over_bigram'], '>6.2f')} "
            f"{fmt(row.get('dense_target_build_ms'), '>6.1f')}ms "
            f"{fmt(row.get('dense_target_copy_ms'), '>5.1f')}ms  {agree}"
        )
    for row in rows:
        failed = {m: row["modes"][m]["status"] for m in MODES if row["modes"][m]["status"] != "ok"}
        if failed:
            print(f"  {row['shape']} {row['dtype']}: {failed}")

    peaks = ", ".join(f"{k} {v:g}" for k, v in args.peak_tflops.items())
    print(
        f"\nthroughput: 6 x params x tokens per step against a peak of {peaks} TFLOPs; "
        f"one mask = {args.max_steps:,} steps + state saves every {args.save_every} steps + "
        "the M = P W_U build"
    )
    header = (
        f"{'shape':<5} {'dtype':<5} {'params':>13} {'tokens':>6} {'TFLOPs a/b/c':>20} "
        f"{'MFU a/b/c':>17} {'(b) mask h':>10} {'(c) mask h':>10}  (b): steps + saves + M"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        modes = row["modes"]
        tflops = "/".join(fmt(modes[m].get("tflops"), ".1f") for m in ("plain", "bigram", "full"))
        mfu = "/".join(fmt(modes[m].get("mfu"), ".1%") for m in ("plain", "bigram", "full"))
        b, c = row["projection"].get("bigram"), row["projection"].get("full")
        parts = (
            f"{b['steps_hours'] * 60:.1f} + {b['saves_hours'] * 60:.1f} + "
            f"{b['bigram_target_hours'] * 60:.1f} min"
            if b
            else "-"
        )
        print(
            f"{row['shape']:<5} {row['dtype']:<5} {row['params']:>13,} {row['tokens']:>6} "
            f"{tflops:>20} {mfu:>17} {fmt(b and b['hours'], '>10.3f')} "
            f"{fmt(c and c['hours'], '>10.3f')}  {parts}"
        )

    print("\npeak device memory (GiB; torch.cuda.max_memory_allocated) vs memory_estimate")
    header = f"{'shape':<5} {'dtype':<5} {'mode':<11} {'peak':>7} {'estimate':>9} {'peak/est':>9}"
    print(header)
    print("-" * len(header))
    for row in rows:
        for name in MODES:
            mode = row["modes"][name]
            print(
                f"{row['shape']:<5} {row['dtype']:<5} {LABELS[name]:<11} "
                f"{gib(mode.get('peak_bytes')):>7} {gib(mode.get('estimate_bytes')):>9} "
                f"{fmt(mode.get('peak_over_estimate'), '>9.2f')}"
            )

    print("\ntargets")
    if not checks:
        print("  none applies to the shapes run (the 1B targets need --shapes 1b)")
    for item in checks:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[item["met"]]
        value = item["value"]
        shown = "-" if value is None else f"{value:.2f} {item['unit']}"
        note = f" ({item['note']})" if item["note"] else ""
        print(f"  {item['target']} [{item['where']}]: {shown} -> {verdict}{note}")


def parse_peak(text: str) -> dict[str, float]:
    """'989' (both dtypes) or 'bf16=989,fp32=67' (either may be left out)."""
    peaks = dict(DEFAULT_PEAK_TFLOPS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" in part:
            key, value = part.split("=", 1)
            if key.strip() not in peaks:
                raise argparse.ArgumentTypeError(f"unknown dtype {key!r} in --peak-tflops")
            peaks[key.strip()] = float(value)
        else:
            peaks = dict.fromkeys(peaks, float(part))
    return peaks


def names(choices: tuple[str, ...] | list[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        picked = [p.strip() for p in text.split(",") if p.strip()]
        unknown = sorted(set(picked) - set(choices))
        if unknown or not picked:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
        return picked

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes",
        type=names(list(SHAPES)),
        help="comma-separated (default: 160m,410m,1b on CUDA, tiny on a CPU)",
    )
    parser.add_argument("--dtypes", type=names(("fp32", "bf16")), default=["fp32", "bf16"])
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cuda, cpu")
    parser.add_argument("--batch", type=int, default=32, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument(
        "--steps", type=int, help="timed steps, median reported (default: 10 on CUDA, 3 on a CPU)"
    )
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 3 / 1)")
    parser.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
    parser.add_argument(
        "--peak-tflops",
        type=parse_peak,
        default=dict(DEFAULT_PEAK_TFLOPS),
        help="'bf16=989,fp32=67' (H100 SXM dense, the default) or one number for both",
    )
    parser.add_argument("--max-steps", type=int, default=15000, help="steps of one mask")
    parser.add_argument(
        "--save-every",
        type=int,
        default=MaskSettings().save_every,
        help="the trainer's state-save interval for the projection (0: leave saves out)",
    )
    parser.add_argument(
        "--draws-per-context",
        type=int,
        default=600,
        help="successor draws per context of the synthetic bigram table (600: ~280 distinct)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write every result as JSON")
    args = parser.parse_args(argv)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    dev = Device(device)
    args.steps = args.steps if args.steps is not None else (10 if dev.cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if dev.cuda else 1)
    if min(args.batch, args.seq_len, args.steps, args.batches) < 1 or args.warmup < 0:
        parser.error("--batch, --seq-len, --steps and --batches must be >= 1, --warmup >= 0")
    if device.type == "cpu":
        tune_cpu(args.threads)
    shapes = args.shapes or (["160m", "410m", "1b"] if dev.cuda else ["tiny"])
    dtypes = list(args.dtypes)
    skipped: list[dict[str, str]] = []
    if not dev.cuda and "bf16" in dtypes:
        dtypes.remove("bf16")
        reason = (
            "the trainer's bf16 autocast is CUDA-only (MaskSettings.bf16 is ignored on a CPU), "
            "so a CPU bf16 row would time fp32 again"
        )
        skipped.append({"dtype": "bf16", "reason": reason})
        print(f"skipping bf16: {reason}")
    setup = {
        "device": str(device),
        "device_name": dev.name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.system()}",
        "steps": args.steps,
        "warmup": args.warmup,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "peak_tflops": args.peak_tflops,
        "max_steps": args.max_steps,
        "save_every": args.save_every,
        "draws_per_context": args.draws_per_context,
        "seed": args.seed,
        "skipped": skipped,
        "bigram_tables": {},
    }
    print(
        f"gpu mask benchmark on {setup['device_name']}: median of {args.steps} steps after "
        f"{args.warmup} warm-up, batch {args.batch} x {args.seq_len}, torch {torch.__version__}"
        f"{f' (CUDA {torch.version.cuda})' if dev.cuda else ''}, TF32 matmul "
        f"{'on' if setup['tf32_matmul'] else 'off'}"
    )
    reference_table = _reference_table_class()
    tables: dict[int, tuple[BigramCounts, Any]] = {}
    rows: list[dict[str, Any]] = []
    shape_setup: dict[str, Any] = {}
    for name in shapes:
        shape = SHAPES[name]
        if shape.vocab not in tables:
            began = time.perf_counter()
            counts = synthetic_counts(shape.vocab, args.draws_per_context, args.seed)
            table = reference_table(counts)
            real = counts.prev < counts.vocab_size
            contexts = np.unique(counts.prev[real]).size
            setup["bigram_tables"][shape.vocab] = info = {
                "nonzeros": int(real.sum()),
                "per_seen_context": float(real.sum() / contexts),
                "unseen_contexts": shape.vocab - contexts,
                "tokens": counts.n_tokens,
                "build_s": time.perf_counter() - began,
            }
            print(
                f"bigram table V={shape.vocab:,}: {info['nonzeros']:,} nonzeros, "
                f"{info['per_seen_context']:.0f} per seen context, {info['unseen_contexts']} "
                f"unseen contexts, {info['tokens']:,} tokens (synthetic table and the "
                f"reference's copy built in {info['build_s']:.1f} s)"
            )
            tables[shape.vocab] = (counts, table)
        counts, table = tables[shape.vocab]
        began = time.perf_counter()
        try:
            shape_rows, extra = measure_shape(shape, dtypes, args, dev, counts, table)
        except torch.cuda.OutOfMemoryError as error:
            message = str(error).splitlines()[0]
            print(f"  {name}: CUDA out of memory ({message}); next shape", file=sys.stderr)
            shape_rows, extra = [], {"status": f"oom: {message}"}
        dev.reset()  # the shape's model is gone (with the traceback, after an error)
        if not shape_rows:
            shape_setup[name] = extra
            continue
        extra["measure_s"] = time.perf_counter() - began
        shape_setup[name] = {"status": "ok", **extra}
        rows.extend(shape_rows)
        print(f"  measured {name} in {extra['measure_s']:.0f} s", file=sys.stderr)
    checks = targets(rows, setup["device_name"])
    report(rows, checks, args)
    mismatches = [r for r in rows if r["loss_check"].get("ok") is False]
    if args.json:
        result = {"setup": setup, "shapes": shape_setup, "rows": rows, "targets": checks}
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if mismatches:
        for row in mismatches:
            print(
                f"LOSS MISMATCH {row['shape']} {row['dtype']}: (b) {row['loss_check']['ours']} "
                f"vs (d) {row['loss_check']['reference']}",
                file=sys.stderr,
            )
        return 1
    print("(b) and (d) agree on the loss of the same batch and soft masks in every row")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
