"""The pretrain stage: embedded GPT-NeoX models are trained here (Hub and local models: models.hub).

Embedded models are initialised as Pythia was (`pythia_init`), trained from scratch on tokens_train
(AdamW, linear warmup then cosine decay, seeded data order) and saved as `final/` plus log-spaced
checkpoints `step-<N>/` (step 0 included), each a `save_pretrained` directory with safetensors
weights and the tokenizer. Train and eval loss
go to `train_log.parquet`; `model.json` records the run, the final eval loss and the smoothed
bigram model's eval loss, which a real language model of the corpus must beat.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from bigram_subnetworks.config import Config, EmbeddedModel
from bigram_subnetworks.data.bigrams import bigram_baseline_cross_entropy, read_bigram_counts
from bigram_subnetworks.data.tokenize import batch_order, read_sequences
from bigram_subnetworks.data.tokenizer import META_FILE, TOKENIZER_FILE, load_tokenizer
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import read_json, write_json, write_parquet
from bigram_subnetworks.models.loading import MODEL_FILE, neox_config, pick_device

log = logging.getLogger(__name__)


# Pythia's GPT-NeoX configs (e.g. EleutherAI/pythia models/160M/pythia-160m.yml) set
# `init_method: small_init` and `output_layer_init_method: wang_init`. GPT-NeoX
# (megatron/model/init_functions.py, gpt2_model.py, transformer.py) applies the output-layer
# method to the two projections that write into the residual stream (attention `dense`, MLP
# `dense_4h_to_h`) and the other to every other weight matrix: the fused QKV, the MLP's
# `dense_h_to_4h`, the token embedding and (Pythia unties it, `no-weight-tying`) the unembedding.
# Biases start at 0, layer norms at weight 1 and bias 0.
OUTPUT_PROJECTIONS = ("attention.dense.weight", "mlp.dense_4h_to_h.weight")


def small_init_std(d_model: int) -> float:
    """GPT-NeoX's `small_init`: std √(2 / (5·d)), from Nguyen & Salazar 2019, "Transformers without
    Tears: Improving the Normalization of Self-Attention" (the std of a Xavier-normal d × 4d)."""
    return math.sqrt(2.0 / (5.0 * d_model))


def wang_init_std(d_model: int, layers: int) -> float:
    """GPT-NeoX's `wang_init`: std 2 / (L·√d), from Ben Wang's mesh-transformer-jax (GPT-J), for
    the projections that write into the residual stream."""
    return 2.0 / (layers * math.sqrt(d_model))


@torch.no_grad()
def pythia_init(model: Any, d_model: int, layers: int) -> None:
    """Re-initialise a GPT-NeoX model in place as Pythia was (see OUTPUT_PROJECTIONS): N(0, wang)
    for the output projections, N(0, small) for every other weight matrix and both embeddings,
    zero biases, unit layer-norm weights. Draws from torch's global generator (seed it first)."""
    small, wang = small_init_std(d_model), wang_init_std(d_model, layers)
    norms = tuple(m for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    norm_params = {id(p) for m in norms for p in m.parameters()}
    for name, param in model.named_parameters():
        if id(param) in norm_params:
            param.fill_(1.0 if name.endswith("weight") else 0.0)
        elif param.ndim < 2:
            param.zero_()
        else:
            param.normal_(0.0, wang if name.endswith(OUTPUT_PROJECTIONS) else small)


def build_model(spec: EmbeddedModel, vocab_size: int, seq_len: int, eos_id: int, seed: int) -> Any:
    """The seeded, Pythia-initialised GPT-NeoX model an embedded spec describes (its step 0)."""
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(neox_config(spec, vocab_size, seq_len, eos_id))
    pythia_init(model, spec.d_model, spec.layers)
    return model


def learning_rate(step: int, spec: EmbeddedModel) -> float:
    """Linear warmup to the peak, then cosine decay to min_lr_ratio × peak."""
    settings = spec.pretrain
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    span = max(settings.steps - settings.warmup_steps, 1)
    progress = min((step - settings.warmup_steps) / span, 1.0)
    floor = settings.min_lr_ratio
    return settings.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def eval_loss(model: Any, sequences: torch.Tensor, batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        loss = model(input_ids=batch, labels=batch).loss
        n = batch.shape[0] * (batch.shape[1] - 1)
        total += float(loss) * n
        count += n
    model.train()
    return total / count


def _save(model: Any, tokenizer_dir: Path, eos: str, path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    model.save_pretrained(path, safe_serialization=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_dir / TOKENIZER_FILE), eos_token=eos, bos_token=eos
    )
    tokenizer.save_pretrained(path)


def pretrain_embedded(
    name: str,
    spec: EmbeddedModel,
    cfg: Config,
    data_dir: Path,
    tokenizer_dir: Path,
    output_dir: Path,
    device: torch.device,
) -> dict[str, Any]:
    """Train an embedded model from scratch; writes output_dir atomically (temp dir + rename)."""
    settings = spec.pretrain
    loaded = load_tokenizer(tokenizer_dir)
    train = read_sequences(data_dir / "tokens_train.parquet")
    evaluation = read_sequences(data_dir / "tokens_eval.parquet")[: settings.eval_sequences]
    baseline = bigram_baseline_cross_entropy(read_bigram_counts(data_dir), evaluation)

    model = build_model(spec, loaded.vocab_size, train.shape[1], loaded.eos_id, cfg.seed)
    model = model.to(device)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.lr,
        betas=(0.9, 0.95),
    )
    order = batch_order(len(train), settings.steps, settings.batch_size, cfg.seed)
    train_tokens = torch.from_numpy(train.astype(np.int64))
    eval_tokens = torch.from_numpy(evaluation.astype(np.int64)).to(device)
    saves = set(settings.checkpoint_steps)

    staging = output_dir.with_name(f".{output_dir.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    rows: dict[str, list] = {"step": [], "lr": [], "train_loss": [], "eval_loss": []}
    started = time.perf_counter()
    if 0 in saves:
        _save(model, tokenizer_dir, loaded.eos_token, staging / "step-0")
    progress = tqdm(range(1, settings.steps + 1), desc=f"pretrain {name}", unit="step")
    for step in progress:
        lr = learning_rate(step - 1, spec)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = train_tokens[order[step - 1]].to(device)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        evaluated = step % settings.eval_every == 0 or step == settings.steps
        current_eval = eval_loss(model, eval_tokens, 64) if evaluated else None
        rows["step"].append(step)
        rows["lr"].append(lr)
        rows["train_loss"].append(float(loss.detach()))
        rows["eval_loss"].append(current_eval)
        if current_eval is not None:
            progress.set_postfix(train=f"{rows['train_loss'][-1]:.3f}", eval=f"{current_eval:.3f}")
        if step in saves:
            _save(model, tokenizer_dir, loaded.eos_token, staging / f"step-{step}")
    _save(model, tokenizer_dir, loaded.eos_token, staging / "final")

    final_eval = rows["eval_loss"][-1]
    info = {
        "source": "embedded",
        "name": name,
        "architecture": "gpt_neox",
        "spec": spec.model_dump(),
        "seed": cfg.seed,
        "vocab_size": loaded.vocab_size,
        "seq_len": int(train.shape[1]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "checkpoints": sorted(saves),
        "final_step": spec.final_step,
        "final_eval_loss": final_eval,
        "bigram_baseline": baseline,
        "beats_bigram_baseline": final_eval < baseline["cross_entropy"],
        "train_seconds": round(time.perf_counter() - started, 1),
        "tokenizer_sha256": read_json(tokenizer_dir / META_FILE).get("sha256"),
    }
    write_parquet(pa.table(rows), staging / "train_log.parquet", seed=cfg.seed)
    write_json(info, staging / MODEL_FILE)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    staging.rename(output_dir)
    log.info(
        "%s: eval loss %.3f nats vs smoothed bigram %.3f (%s) -> %s",
        name,
        final_eval,
        baseline["cross_entropy"],
        "beats it" if info["beats_bigram_baseline"] else "DOES NOT beat it",
        output_dir,
    )
    return info


def prepare_model(
    name: str, cfg: Config, data_dir: Path, tokenizer_dir: Path, output_dir: Path
) -> dict[str, Any]:
    """Run the model stage for one configured model."""
    if name not in cfg.models:
        known = ", ".join(cfg.models) or "none"
        raise UserError(f"model {name!r} is not in the config (models: {known})")
    spec = cfg.models[name]
    if not isinstance(spec, EmbeddedModel):
        raise UserError(
            f"models.{name}: a {spec.source} model is recorded by the fetch stage, not pretrained"
        )
    return pretrain_embedded(
        name, spec, cfg, data_dir, tokenizer_dir, output_dir, pick_device(cfg.device)
    )


def run_stage(
    cfg: Config,
    *,
    model: str,
    tokens_train: Path,
    tokens_eval: Path,
    bigram_stats: Path,
    tokenizer: Path,
    model_dir: Path,
) -> None:
    """The pretrain stage of one model (the token files sit in the bigram statistics' folder)."""
    for tokens in (tokens_train, tokens_eval):
        if tokens.parent != bigram_stats:
            raise UserError(f"{tokens}: expected in {bigram_stats}, beside the bigram statistics")
    prepare_model(model, cfg, bigram_stats, tokenizer, model_dir)
