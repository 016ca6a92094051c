"""Model loading: embedded models built here, Hub models by id and revision, local directories.

Every model stage (pretrain for embedded models, fetch for Hub and local ones) writes
`results/<run>/models/<name>/model.json`, which says how to load the model again (and, for Hub
models, which commit each revision resolved to: they load from the run's Hub cache by commit).
Weights are read from safetensors only (a Hub revision that has only pickled weights loads from
the safetensors folder fetch converted them into: `models.weights`); `trust_remote_code` stays off
unless the config turns it on.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from bigram_subnetworks.config import EmbeddedModel, LocalModel
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import read_json, sha256_file

MODEL_FILE = "model.json"


def pick_device(requested: str) -> torch.device:
    """`auto` picks CUDA when available, else the CPU; `cuda` without a GPU is an error. On CUDA
    the job claims a GPU of its own (devices.claim_gpu), so concurrent jobs use different GPUs."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda requested but no CUDA device is visible; use auto or cpu")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    from bigram_subnetworks.devices import claim_gpu

    index = claim_gpu(torch.cuda.device_count())
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def tune_cpu(threads: int | None) -> None:
    """Give torch the stage's threads and raise glibc's mmap threshold (faster CPU training)."""
    if threads:
        torch.set_num_threads(threads)
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:
            return
        m_mmap_threshold, m_trim_threshold = -3, -1
        libc.mallopt(m_mmap_threshold, 1 << 30)
        libc.mallopt(m_trim_threshold, 1 << 30)


def neox_config(spec: EmbeddedModel, vocab_size: int, max_positions: int, eos_id: int) -> Any:
    """A Pythia-style GPT-NeoX config for an embedded model."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=spec.d_model,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        intermediate_size=spec.d_ff or 4 * spec.d_model,
        max_position_embeddings=max_positions,
        rotary_pct=spec.rotary_pct,
        rotary_emb_base=spec.rotary_base,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )


def _from_pretrained(
    name_or_path: str | Path,
    revision: str | None = None,
    trust_remote_code: bool = False,
    cache: str | None = None,
) -> Any:
    """A causal LM from a folder, or from a Hub cache (`cache`: never the network), safetensors
    only, in float32 and eval mode."""
    from transformers import AutoModelForCausalLM

    hub = {"cache_dir": cache, "local_files_only": True} if cache else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path,
            revision=revision,
            dtype=torch.float32,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            **hub,
        )
    except (OSError, ValueError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{name_or_path}: cannot load the model ({first}); re-download it or rerun its "
            "model stage"
        ) from None
    return model.eval()


def load_pretrained_dir(path: Path | str, trust_remote_code: bool = False) -> Any:
    """Load a causal LM saved with `save_pretrained` into a local folder."""
    path = Path(path)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise UserError(f"{path}: not a model directory (no config.json); check the model path")
    return _from_pretrained(path, trust_remote_code=trust_remote_code)


def describe_local_model(spec: LocalModel) -> dict[str, Any]:
    """Check a local model directory loads and record where it is."""
    model = load_pretrained_dir(spec.path)
    return {
        "source": "local",
        "path": str(Path(spec.path)),
        "model_type": model.config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


# The keys a model stage writes into model.json for each source, beyond `source` itself.
INFO_KEYS = {
    "embedded": (),
    "local": ("path",),
    "huggingface": (
        "id",
        "revision",
        "commit",
        "checkpoint_revision",
        "checkpoints",
        "cache",
        "weights",
    ),
}


def read_model_info(model_dir: Path | str) -> dict[str, Any]:
    """`<model_dir>/model.json`, checked to hold what its source needs."""
    path = Path(model_dir) / MODEL_FILE
    info = read_json(path)
    source = info.get("source") if isinstance(info, dict) else None
    if source not in INFO_KEYS:
        raise UserError(f"{path}: unknown source {source!r}; rerun its model stage")
    missing = [key for key in INFO_KEYS[source] if key not in info]
    if missing:
        raise UserError(
            f"{path}: no {', '.join(missing)} for a {source} model; rerun its model stage"
        )
    return info


def load_model(model_dir: Path | str, trust_remote_code: bool = False) -> tuple[Any, dict]:
    """Load the model a model stage described in `<model_dir>/model.json`."""
    model_dir = Path(model_dir)
    info = read_model_info(model_dir)
    source = info["source"]
    if source == "embedded":
        return load_pretrained_dir(model_dir / "final"), info
    if source == "local":
        return load_pretrained_dir(info["path"]), info
    return _load_revision(info, info, trust_remote_code), info


def _load_revision(info: dict[str, Any], revision: dict[str, Any], trust_remote_code: bool) -> Any:
    """A fetched Hub revision (`revision`: model.json's record of it): from the Hub cache by
    commit, or from the safetensors folder fetch converted its pickled weights into."""
    converted = (revision.get("weights") or {}).get("converted")
    if converted:
        return load_pretrained_dir(converted["folder"], trust_remote_code=trust_remote_code)
    return _from_pretrained(info["id"], revision["commit"], trust_remote_code, info["cache"])


def load_checkpoint(
    model_dir: Path | str, step: int, trust_remote_code: bool = False
) -> tuple[Any, dict[str, Any]]:
    """Load the pretraining checkpoint of `step` (an embedded model's `step-<N>/` folder or a Hub
    model's checkpoint revision) and its identity, as stored in mask metadata."""
    model_dir = Path(model_dir)
    info = read_model_info(model_dir)
    source = info["source"]
    identity: dict[str, Any] = {"model": info.get("name"), "source": source, "step": step}
    if source == "embedded":
        folder = model_dir / f"step-{step}"
        if not folder.is_dir():
            raise UserError(
                f"{folder}: no checkpoint at step {step} (saved: {info.get('checkpoints')}); "
                "use a saved step in checkpoints.steps"
            )
        return load_pretrained_dir(folder), identity | _weights_identity(folder)
    if source == "huggingface":
        fetched = info["checkpoints"].get(str(step))
        if fetched is None:
            raise UserError(
                f"{model_dir / MODEL_FILE}: checkpoint step {step} was not fetched (fetched: "
                f"{sorted(map(int, info['checkpoints']))}); add it to checkpoints.steps and rerun "
                "the fetch stage"
            )
        model = _load_revision(info, fetched, trust_remote_code)
        found = {key: fetched[key] for key in ("revision", "commit")}
        return model, identity | {"id": info["id"], **found}
    raise UserError(f"{model_dir / MODEL_FILE}: a {source} model has no training checkpoints")


def _weights_identity(weights_dir: Path) -> dict[str, Any]:
    """The folder name and a sha256 over the folder's safetensors files."""
    files = sorted(weights_dir.glob("*.safetensors"))
    if not files:
        raise UserError(f"{weights_dir}: no safetensors weights; save the model with safetensors")
    digest = hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()
    return {"revision": weights_dir.name, "weights_sha256": digest}


def model_identity(model_dir: Path | str, info: dict[str, Any]) -> dict[str, Any]:
    """What identifies the weights a mask was trained on: the Hub commit, or a sha256 of the
    safetensors files (embedded and local models). Stored in every mask's metadata."""
    identity: dict[str, Any] = {"model": info.get("name"), "source": info.get("source")}
    if info.get("source") == "huggingface":
        return identity | {k: info[k] for k in ("id", "revision", "commit")}
    weights_dir = (
        Path(model_dir) / "final" if info.get("source") == "embedded" else Path(info["path"])
    )
    return identity | _weights_identity(weights_dir)


def dropped_steps(info: dict[str, Any]) -> set[int]:
    """The checkpoint steps fetch dropped (model.json's `dropped_steps`: revisions serving another
    step's weights, with `checkpoints.duplicate_steps: drop`); every analysis leaves them out."""
    return {int(step) for step in info.get("dropped_steps") or {}}
