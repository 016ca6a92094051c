"""Deep validation: the checks a config passes before any work that need more than the schema.

The schema (config.py) checks each value and the rules between fields; this module looks at what
the config points to, without the network: local paths exist, every model's architecture is one
bsn can mask (read from its config.json: a local folder, or the Hub cache when the model was
fetched before), and the tokenizer fits the model's embedding. Both front-ends run it before the
first job (Snakemake when it reads the workflow, DVC in its `config` stage), and so does
`bsn validate`. Every problem is one line naming the field and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bigram_subnetworks.config import Config, ConfigError, HuggingFaceModel, LocalModel
from bigram_subnetworks.errors import UserError


def _config_json(cfg: Config, name: str) -> dict[str, Any] | None:
    """A model's config.json when it can be read without the network."""
    spec = cfg.models[name]
    if isinstance(spec, LocalModel):
        path = Path(spec.path) / "config.json"
    elif isinstance(spec, HuggingFaceModel):
        from bigram_subnetworks.models.hub import cached_file

        path = cached_file(cfg, spec.id, spec.revision, "config.json")
    else:
        return None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _tokenizer_size(cfg: Config) -> int | None:
    """The size of a pretrained tokenizer's vocabulary, when its file can be read offline."""
    tokenizer = cfg.tokenizer
    if tokenizer.source != "pretrained":
        return None
    local = Path(tokenizer.model)
    if local.is_dir():
        path: Path | None = local / "tokenizer.json"
    elif local.suffix == ".json":
        path = local
    else:
        from bigram_subnetworks.models.hub import cached_file

        path = cached_file(cfg, tokenizer.model, tokenizer.revision or "main", "tokenizer.json")
    if path is None or not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    except Exception:
        return None


def problems(cfg: Config) -> list[str]:
    """Every problem found, one line each (empty: the config is fine as far as one can tell)."""
    from bigram_subnetworks.models.families import check_supported

    found: list[str] = []
    corpus = cfg.corpus
    if corpus.source == "local" and not Path(corpus.path).is_dir():
        found.append(f"corpus.path: {corpus.path} is not a folder; give the folder of your texts")
    tokenizer = cfg.tokenizer
    if (
        tokenizer.source == "pretrained"
        and not Path(tokenizer.model).exists()
        and (tokenizer.model.startswith((".", "/", "~")) or tokenizer.model.count("/") != 1)
    ):
        found.append(
            f"tokenizer.model: {tokenizer.model} is neither a local folder nor a Hub id "
            "(org/name); fix the path or the id"
        )
    vocabulary = _tokenizer_size(cfg)
    for name, spec in cfg.models.items():
        if isinstance(spec, LocalModel) and not (Path(spec.path) / "config.json").is_file():
            found.append(
                f"models.{name}.path: {spec.path} holds no config.json; give a folder written "
                "by save_pretrained"
            )
            continue
        config = _config_json(cfg, name)
        if config is None:
            continue
        try:
            check_supported(config.get("model_type"))
        except UserError as error:
            found.append(f"models.{name}: {error}")
        rows = config.get("vocab_size")
        if vocabulary is not None and isinstance(rows, int) and vocabulary > rows:
            found.append(
                f"models.{name}: the tokenizer has {vocabulary} tokens but the model embeds "
                f"only {rows}; use the model's own tokenizer (tokenizer.model)"
            )
    from bigram_subnetworks.masks.reference import HUB_PREFIX

    for name, sources in (cfg.reference_masks or {}).items():
        for label, text in sources.items():
            if not text.startswith(HUB_PREFIX) and not Path(text).is_file():
                found.append(
                    f"reference_masks.{name}.{label}: {text} is not a file; give the authors' "
                    "subnetwork_dict_lambda<λ>.pickle or an hf://<owner>/<repo> path"
                )
    return found


def check(cfg: Config, source: str) -> None:
    """Raise ConfigError listing every problem, one line each, prefixed with the config's name."""
    found = problems(cfg)
    if found:
        raise ConfigError(f"{source}: " + f"\n{source}: ".join(found))
