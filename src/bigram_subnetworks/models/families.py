"""The model families bsn can mask, by Hugging Face `model_type`, without importing torch.

Config validation reads `model_type` from a model's cached `config.json` and calls
`check_supported` (or `check_config_json`) before any model is loaded, so an unsupported family
fails early, in one line that lists the supported ones. `models.layout` holds the per-family
weight layouts and must cover exactly the families listed here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bigram_subnetworks.errors import UserError


@dataclass(frozen=True)
class Family:
    """One supported family: its display name and the transformers class to load it as."""

    name: str
    causal_lm: str


# model_type (config.json) -> family. Llama-style families have separate q/k/v/o projections,
# grouped-query attention and a gated MLP (gate_proj, up_proj, down_proj).
FAMILIES: dict[str, Family] = {
    "gpt_neox": Family("GPT-NeoX (Pythia)", "GPTNeoXForCausalLM"),
    "gpt2": Family("GPT-2", "GPT2LMHeadModel"),
    "llama": Family("Llama", "LlamaForCausalLM"),
    "mistral": Family("Mistral", "MistralForCausalLM"),
    "qwen2": Family("Qwen2", "Qwen2ForCausalLM"),
    "qwen3": Family("Qwen3", "Qwen3ForCausalLM"),
    "olmo2": Family("OLMo-2", "Olmo2ForCausalLM"),
    "olmo3": Family("OLMo-3", "Olmo3ForCausalLM"),
    "gemma": Family("Gemma", "GemmaForCausalLM"),
    "gemma2": Family("Gemma-2", "Gemma2ForCausalLM"),
    "gemma3_text": Family("Gemma-3 (text)", "Gemma3ForCausalLM"),
}
SUPPORTED: dict[str, str] = {model_type: family.name for model_type, family in FAMILIES.items()}

# Types that are close to a supported one but not it: a hint on what to use instead.
_HINTS = {
    "gemma3": "Gemma-3 vision-language checkpoints (model_type gemma3) are not supported; "
    "use a text-only Gemma-3 (model_type gemma3_text, e.g. gemma-3-1b or gemma-3-270m)",
}


def supported_list() -> str:
    """'Name (model_type), …' of every supported family, for messages."""
    return ", ".join(f"{family.name} ({model_type})" for model_type, family in FAMILIES.items())


def family_name(model_type: str) -> str:
    """The display name of a supported model_type (refuses others like `check_supported`)."""
    check_supported(model_type)
    return SUPPORTED[model_type]


def check_supported(model_type: Any) -> None:
    """Refuse a model_type bsn cannot mask, in one line naming the supported families."""
    if isinstance(model_type, str) and model_type in FAMILIES:
        return
    hint = _HINTS.get(model_type) if isinstance(model_type, str) else None
    if hint is not None:
        raise UserError(f"model type {model_type!r}: not supported; {hint}")
    raise UserError(
        f"model type {model_type!r}: not supported; supported families: {supported_list()}"
    )


def check_config_json(path: Path | str) -> str:
    """Read `model_type` from a model's config.json (or the folder holding it), check that it is
    supported and return it."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found; download the model first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{path}: not a readable config.json ({reason}); re-download it") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise UserError(f"{path}: no model_type; not a Hugging Face model config")
    check_supported(config["model_type"])
    return str(config["model_type"])
