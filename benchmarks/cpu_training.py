"""CPU throughput of the embedded default's training: threads per job, jobs per machine, compile.

For each embedded model of the default (params.yaml: GPT-NeoX 2x48, 2x80, 4x96, built as the
pretrain stage builds them; vocabulary 4,096; batch 16 × 64), tokens per second of a pretraining
step (forward, backward, AdamW) and of a mask-training step (the trainer's own step_gradients with
the bigram target, then AdamW on the mask logits), under:

  all-threads   one job using every core (torch's default: the baseline)
  1-thread      one job on one thread
  parallel      one 1-thread job per core, all at once (machine throughput = the sum)
  compiled      one job, every core, the model wrapped in torch.compile (pretraining only)

Ratios are against the baseline measured in the same run. The workflow's choice follows from them:
a `threads:` setting in the config (params.yaml: 1) lets Snakemake run one torch job per core.
Reports only; exit 0.

    .venv/bin/python benchmarks/cpu_training.py [--steps N] [--models ...] [--no-compile]
                                                [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _default_family() -> tuple[Any, dict[str, Any]]:
    """The embedded default (params.yaml) and its embedded models, by name."""
    from bigram_subnetworks.config import load_config

    cfg = load_config(ROOT / "params.yaml")
    return cfg, {n: spec for n, spec in cfg.models.items() if spec.source == "embedded"}


CONFIG, MODELS = _default_family()
VOCAB, BATCH, SEQ = CONFIG.tokenizer.vocab_size, CONFIG.masks.batch_size, CONFIG.data.seq_len


def _build(name: str) -> Any:
    """The model the pretrain stage builds for `name` (same config), seeded."""
    import torch
    from transformers import GPTNeoXForCausalLM

    from bigram_subnetworks.models.loading import neox_config

    torch.manual_seed(0)
    return GPTNeoXForCausalLM(neox_config(MODELS[name], VOCAB, SEQ, eos_id=0))


def _pretrain_step(name: str, compiled: bool) -> Any:
    import torch

    model = _build(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if compiled else model
    batch = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))

    def step() -> None:
        forward(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def _mask_step(name: str, compiled: bool) -> Any:
    import numpy as np
    import torch

    from bigram_subnetworks.config import MaskSettings
    from bigram_subnetworks.data.bigrams import count_bigrams
    from bigram_subnetworks.masks.losses import BigramTarget
    from bigram_subnetworks.masks.train import (
        MaskedLM,
        MaskRun,
        step_autocast,
        step_gradients,
        target_loss,
    )

    model = _build(name).eval()
    rng = np.random.default_rng(0)
    tokens = rng.zipf(1.3, size=(2000, SEQ)).clip(max=VOCAB - 1).astype(np.uint32)
    counts = count_bigrams(tokens, VOCAB)
    lm = MaskedLM(model, VOCAB)
    target = BigramTarget.build(counts, lm.unembed, lm.unembed_bias)
    run = MaskRun("bigram", "1e1", MaskSettings(batch_size=BATCH), seed=0, model_info={})
    logits = {n: torch.zeros(s, requires_grad=True) for n, s in lm.layout.shapes.items()}
    optimizer = torch.optim.AdamW(logits.values(), lr=1e-2)
    batch = torch.from_numpy(tokens[:BATCH].astype(np.int64))
    autocast = step_autocast(False, torch.device("cpu"))

    def loss_fn(micro: torch.Tensor, soft: dict) -> torch.Tensor:
        return target_loss(lm, "bigram", micro, soft, target)

    def step() -> None:
        step_gradients(lm, run, logits, batch, 1.0, loss_fn, autocast)
        optimizer.step()
        optimizer.zero_grad()

    return step


def _measure(kind: str, name: str, threads: int | None, steps: int, compiled: bool) -> float:
    """Seconds per step of one job (run in this process)."""
    import torch

    from bigram_subnetworks.models.loading import tune_cpu

    if threads:
        torch.set_num_threads(threads)
    tune_cpu(threads)
    step = (_pretrain_step if kind == "pretrain" else _mask_step)(name, compiled)
    for _ in range(3 if not compiled else 2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def _worker(args: tuple[str, str, int, int, bool]) -> float:
    kind, name, threads, steps, compiled = args
    return _measure(kind, name, threads, steps, compiled)


def _in_fresh_processes(jobs: list[tuple[str, str, int | None, int, bool]]) -> list[float]:
    """Run jobs at the same time, each in a fresh process (torch threads are per process)."""
    with mp.get_context("spawn").Pool(len(jobs)) as pool:
        return pool.map(_worker, jobs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="Timed steps per measurement.")
    parser.add_argument("--models", default=",".join(MODELS), help="Comma-separated models.")
    parser.add_argument("--no-compile", action="store_true", help="Skip torch.compile.")
    parser.add_argument("--json", help="Also write every number to this file.")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    tokens = BATCH * SEQ
    print(f"{platform.processor() or platform.machine()}, {cores} cores; {tokens} tokens per step")
    results: list[dict[str, Any]] = []
    for name in args.models.split(","):
        for kind in ("pretrain", "mask"):
            base = _in_fresh_processes([(kind, name, None, args.steps, False)])[0]
            one = _in_fresh_processes([(kind, name, 1, args.steps, False)])[0]
            many = _in_fresh_processes([(kind, name, 1, args.steps, False)] * cores)
            rows = {
                "all-threads": tokens / base,
                "1-thread": tokens / one,
                f"parallel ×{cores}": sum(tokens / s for s in many),
            }
            if kind == "pretrain" and not args.no_compile:
                compiled = _in_fresh_processes([(kind, name, None, args.steps, True)])[0]
                rows["compiled"] = tokens / compiled
            for setting, rate in rows.items():
                ratio = rate / rows["all-threads"]
                print(f"{name:10} {kind:8} {setting:13} {rate:9,.0f} tokens/s  {ratio:5.2f}x")
                results.append(
                    {
                        "model": name,
                        "step": kind,
                        "setting": setting,
                        "tokens_per_s": rate,
                        "ratio": ratio,
                    }
                )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"cores": cores, "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
