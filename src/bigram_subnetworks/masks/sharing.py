"""Sharing masks: mask cards, pruned-model export and pulling masks from the Hugging Face Hub.

- A *mask card* is what a mask file's metadata says about it (model and weights, target, λ, kept
  fraction, training settings, file format), rendered as text (`bsn mask info`) or Markdown
  (`bsn mask card`, the README of an export); r comes from the evaluate stage's masks.parquet
  when given, else the card says "not measured".
- `export_pruned` writes a `save_pretrained` folder of the model with the mask applied (dropped
  entries exactly 0), its tokenizer files and a README card: a plain transformers model.
- `pull_mask` fetches a mask file from a Hub model or dataset repo through the Hugging Face cache
  (HF_HOME / HF_HUB_CACHE and HF_HUB_OFFLINE are read when it runs), checks it with `load_mask`
  and copies it, byte for byte, to its destination.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import atomic_outputs, read_parquet, sha256_file
from bigram_subnetworks.masks.toolkit import FORMAT_KEY, MASK_FORMAT

# r metrics of the evaluate stage (metrics/masks.parquet) shown on a card, with their labels.
R_METRICS = {
    "bigram_r": "r with bigram surprisal",
    "full_model_r": "r with the full model's surprisal",
}
# Metadata keys a card shows itself; `bsn mask info` lists the others after them.
CARD_KEYS = (
    "id",
    "model",
    "source",
    "model_type",
    "commit",
    "revision",
    "weights_sha256",
    "step",
    "embeddings_from",
    "target",
    "lambda",
    "kept",
    "total",
    "seed",
    "steps",
    "attempts",
    "stable",
    "stopped_early",
    "settings_sha256",
    "run_sha256",
    "operation",
    "sources",
    "params_sha256",
    FORMAT_KEY,
)
# Files of a tokenizer that an export copies from the model's folder when they are there.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
)
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
DEFAULT_MASK_FILE = "mask.safetensors"
EXPORT_DTYPES = ("float32", "bfloat16", "float16")


# ------------------------------------------------------------------------------ mask cards


def _model_name(metadata: dict[str, Any]) -> str:
    if "id" in metadata:
        return str(metadata["id"])
    if "model" in metadata and metadata["model"] is not None:
        return f"{metadata['model']} ({metadata.get('source', 'unknown source')})"
    return "not recorded"


def _weights(metadata: dict[str, Any]) -> str:
    if "commit" in metadata:
        return f"commit {metadata['commit']} (revision {metadata.get('revision', '?')})"
    if "weights_sha256" in metadata:
        return f"weights sha256 {metadata['weights_sha256']} ({metadata.get('revision', '?')})"
    return "not recorded"


def _training(metadata: dict[str, Any]) -> str:
    if "steps" not in metadata:
        return "not recorded"
    text = f"{metadata['steps']} steps"
    if "attempts" in metadata:
        text += f", {metadata['attempts']} attempt(s)"
    if metadata.get("stopped_early"):
        text += ", stopped early (converged)"
    if metadata.get("stable") is False:
        text += ", unrecovered loss spike"
    return text


def _format(metadata: dict[str, Any]) -> str:
    version = metadata.get(FORMAT_KEY, 1)
    if version == MASK_FORMAT:
        return f"{version} (safetensors, bit-packed: 1 bit per entry)"
    return f"{version} (safetensors, one bool byte per entry)"


def card_fields(
    metadata: dict[str, Any], r: dict[str, float] | None = None
) -> list[tuple[str, str]]:
    """(label, value) rows of a mask's card, from its decoded metadata and measured r values."""
    from bigram_subnetworks.models.families import FAMILIES

    share = metadata["kept"] / metadata["total"] if metadata.get("total") else 0.0
    rows = [("model", _model_name(metadata))]
    if metadata.get("model_type") in FAMILIES:
        rows.append(("family", f"{FAMILIES[metadata['model_type']].name}"))
    rows.append(("weights", _weights(metadata)))
    if "step" in metadata:
        rows.append(("pretraining step", str(metadata["step"])))
    if "embeddings_from" in metadata:
        rows.append(("embeddings from", _weights(metadata["embeddings_from"])))
    rows += [
        ("target", str(metadata.get("target", "not recorded"))),
        ("lambda", str(metadata.get("lambda", "not recorded"))),
        ("kept", f"{metadata['kept']:,} of {metadata['total']:,} ({share:.4%})"),
    ]
    for metric, label in R_METRICS.items():
        value = (r or {}).get(metric)
        rows.append((label, "not measured" if value is None else f"{value:.4f}"))
    if "operation" in metadata:
        sources = ", ".join(str(s) for s in metadata.get("sources", []))
        rows.append(("derived", f"{metadata['operation']} of {sources}"))
    reference = metadata.get("reference")
    if isinstance(reference, dict):  # an import of the authors' release (masks.reference)
        rows.append(("authors' model", str(reference.get("orig_model_name") or "not recorded")))
        where = f"{reference['repo']}@{reference.get('commit')}: " if "repo" in reference else ""
        rows.append(
            ("source file", f"{where}{reference.get('file')} (sha256 {reference.get('sha256')})")
        )
    rows += [
        ("seed", str(metadata.get("seed", "not recorded"))),
        ("training", _training(metadata)),
        ("settings sha256", str(metadata.get("settings_sha256", "not recorded"))),
        ("run sha256", str(metadata.get("run_sha256", "not recorded"))),
        ("params sha256", str(metadata["params_sha256"])),
        ("file format", _format(metadata)),
    ]
    return rows


def other_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """The metadata a card does not show (user keys, training settings)."""
    return {k: v for k, v in sorted(metadata.items()) if k not in CARD_KEYS}


def measured_r(metrics: Path | str, metadata: dict[str, Any]) -> dict[str, float]:
    """The mask's r values in an evaluate stage's masks.parquet (matched by the model, target
    and λ of its metadata); empty when the table has none."""
    table = read_parquet(metrics, columns=["model", "target", "lambda", "metric", "value"])
    key = (metadata.get("model"), metadata.get("target"), metadata.get("lambda"))
    return {
        row["metric"]: row["value"]
        for row in table.to_pylist()
        if (row["model"], row["target"], row["lambda"]) == key and row["metric"] in R_METRICS
    }


def render_card(
    metadata: dict[str, Any],
    r: dict[str, float] | None = None,
    mask_file: str = DEFAULT_MASK_FILE,
    export: dict[str, Any] | None = None,
) -> str:
    """A Markdown card (with Hub YAML front matter) of a mask; `export` describes the pruned
    model folder the card goes into (see `export_pruned`)."""
    front = ["---", "tags:", "- bigram-subnetworks", "- binary-mask", "- pruning"]
    if "id" in metadata:
        front.append(f"base_model: {json.dumps(str(metadata['id']))}")
    if export is not None:
        front.append("library_name: transformers")
    front.append("---")
    target, lam, model = metadata.get("target"), metadata.get("lambda"), _model_name(metadata)
    title = f"# {target or 'derived'} mask" + ("" if model == "not recorded" else f" of {model}")
    title += "" if lam is None else f", λ = {lam}"
    lines = [*front, "", title, ""]
    if export is None and "reference" in metadata:
        lines.append(
            "One of the binary weight masks the paper's authors released (Chang & Bergen 2025, "
            "*Bigram Subnetworks*; a pickle of numpy arrays), imported by `bsn mask import` onto "
            "the model's Transformer-block matrices (embeddings, norms and biases are always "
            "kept). True keeps an entry."
        )
    elif export is None:
        lines.append(
            "A binary weight mask over the frozen model's Transformer-block matrices (attention "
            "Q, K, V, O and the MLP matrices; embeddings, norms and biases are always kept), "
            "found by continuous sparsification with the bigram-subnetworks workflow (`bsn`; "
            "Chang & Bergen 2025, *Bigram Subnetworks*). True keeps an entry."
        )
    else:
        lines.append(
            "The model with a binary weight mask applied: the masked entries of its "
            "Transformer-block matrices are exactly 0, every other parameter is the original "
            "model's. It loads as a plain transformers model:"
        )
        lines += [
            "",
            "```python",
            "from transformers import AutoModelForCausalLM",
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
            "```",
        ]
    lines += ["", "| field | value |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in card_fields(metadata, r)]
    if export is not None:
        lines += [
            f"| mask file | {export['mask_file']} (sha256 {export['mask_sha256']}) |",
            f"| zeroed entries | {export['zeroed']:,} of {export['total']:,} |",
            f"| exported dtype | {export['dtype']} |",
            f"| tokenizer | {export['tokenizer']} |",
        ]
    if any(metric not in (r or {}) for metric in R_METRICS):
        lines += [
            "",
            "r is the Pearson correlation, over held-out tokens, of the masked model's "
            "surprisal with bigram surprisal (or with the full model's); it is filled in from "
            "the evaluate stage's `metrics/masks.parquet` (`bsn mask card --metrics`).",
        ]
    settings = metadata.get("settings")
    if isinstance(settings, dict):
        lines += ["", "## Training settings", "", "```json", json.dumps(settings, indent=2)]
        lines.append("```")
    if export is None:
        lines += [
            "",
            "## Use",
            "",
            "```bash",
            f"bsn mask pull <repo-id> --filename {mask_file} --output mask.safetensors",
            "bsn mask info mask.safetensors",
            "bsn mask export mask.safetensors --model-dir <the model's folder> --output pruned/",
            "```",
            "",
            "```python",
            "from bigram_subnetworks.masks.toolkit import load_mask, masked",
            'mask, metadata = load_mask("mask.safetensors")  # {parameter name: bool tensor}',
            "with masked(model, mask):  # the model with dropped entries zeroed, restored after",
            "    logits = model(input_ids).logits",
            "```",
        ]
    lines += [
        "",
        "## Mask file format",
        "",
        f"safetensors, bsn mask format {MASK_FORMAT}: one 1-D uint8 tensor per masked parameter, "
        "under the parameter's name, holding its entries in row-major order packed 8 per byte "
        "with little-endian bit order (`numpy.packbits(..., bitorder='little')`; 1 keeps the "
        "entry; the last byte's unused high bits are 0). JSON metadata: `bsn_mask_format` (2), "
        "`bsn_mask_bit_order` (`little`), `bsn_mask_shapes` ({name: shape}), `kept`, `total`, "
        "`params_sha256` (sha256 of the sorted `name:shape` lines) and the training metadata "
        "shown above.",
        "",
    ]
    return "\n".join(lines)


def write_text(path: Path, text: str) -> None:
    with atomic_outputs(path) as (temp,):
        temp.write_text(text, encoding="utf-8")


# -------------------------------------------------------------------------- pruned models


def _model_source(model_dir: Path) -> tuple[Any, dict[str, Any], Path | None]:
    """The model in a workflow model folder or a save_pretrained folder, the identity of its
    weights (as masks record it) and the folder its tokenizer files would be in (if known)."""
    from bigram_subnetworks.models.loading import (
        MODEL_FILE,
        _weights_identity,
        load_model,
        load_pretrained_dir,
        model_identity,
    )

    if not (model_dir / MODEL_FILE).is_file():
        return load_pretrained_dir(model_dir), _weights_identity(model_dir), model_dir
    model, info = load_model(model_dir)
    identity = model_identity(model_dir, info)
    if info["source"] == "embedded":
        return model, identity, model_dir / "final"
    if info["source"] == "local":
        return model, identity, Path(info["path"])
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(
        info["id"], "config.json", cache_dir=info.get("cache"), revision=info["commit"]
    )
    return model, identity, Path(cached).parent if isinstance(cached, str) else None


def _copy_tokenizer(source: Path | None, folder: Path) -> str:
    """Copy the tokenizer files of `source` into `folder`; what was done, for the card."""
    if source is None or not any((source / name).is_file() for name in TOKENIZER_MARKERS):
        return f"not copied (no tokenizer files in {source or 'the Hub cache'})"
    copied = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    for name in copied:
        shutil.copyfile(source / name, folder / name)
    return f"copied from the model folder ({', '.join(copied)})"


def export_pruned(
    mask_path: Path, model_dir: Path, output: Path, dtype: str = "float32"
) -> dict[str, Any]:
    """Write `output`, a save_pretrained folder (safetensors) of the model in `model_dir` with the
    mask applied (dropped entries exactly +0.0), its tokenizer files and a README.md card.
    Refuses a mask of another model or other weights, and an `output` that is not empty. The
    folder appears only once it is complete."""
    import torch

    from bigram_subnetworks.masks.toolkit import load_mask
    from bigram_subnetworks.models.layout import layout_of

    if dtype not in EXPORT_DTYPES:
        raise UserError(f"--dtype {dtype}: use one of {', '.join(EXPORT_DTYPES)}")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"{output}: exists and is not an empty folder; give a new folder")
    model, identity, tokenizer_source = _model_source(model_dir)
    mask, metadata = load_mask(mask_path, layout_of(model), identity)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, keep in mask.items():
            params[name].masked_fill_(~keep.to(params[name].device), 0.0)
    model = model.to(getattr(torch, dtype))
    temp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    try:
        model.save_pretrained(temp, safe_serialization=True)
        export = {
            "mask_file": mask_path.name,
            "mask_sha256": sha256_file(mask_path),
            "zeroed": metadata["total"] - metadata["kept"],
            "total": metadata["total"],
            "dtype": dtype,
            "tokenizer": _copy_tokenizer(tokenizer_source, temp),
        }
        (temp / "README.md").write_text(render_card(metadata, export=export), encoding="utf-8")
        if output.exists():
            output.rmdir()  # empty (checked above)
        os.replace(temp, output)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return export


# ------------------------------------------------------------------------------- the Hub


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment as it is now (huggingface_hub reads it
    once, at import): HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.environ[name])).expanduser()
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(os.path.expandvars(os.environ.get("HF_HOME", str(default)))).expanduser() / "hub"


def hub_offline() -> bool:
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def hub_file(
    repo_id: str, filename: str, revision: str | None = None, repo_type: str = "model"
) -> tuple[Path, str | None]:
    """Download (or, offline, find in the cache) `filename` of a Hub repo through the Hugging
    Face cache; its local path and the commit it came from. Failures are one-line UserErrors
    naming the repo, the revision and the file."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline() or bool(constants.HF_HUB_OFFLINE)
    where = f"{repo_type} repo {repo_id}@{revision or 'main'}"
    try:
        local = hf_hub_download(
            repo_id,
            filename,
            repo_type=repo_type,
            revision=revision,
            cache_dir=hub_cache_dir(),
            local_files_only=offline,
        )
    except RepositoryNotFoundError:
        raise UserError(f"{where}: repository not found (or private); check the id") from None
    except RevisionNotFoundError:
        raise UserError(f"{where}: revision not found; check --revision") from None
    except EntryNotFoundError:
        fix = (
            f"not in the cache {hub_cache_dir()} (HF_HUB_OFFLINE is set): pull it once with "
            "network access, or point HF_HOME at a cache that holds it"
            if offline
            else "check --filename"
        )
        raise UserError(f"{where}: {filename} not found; {fix}") from None
    except HFValidationError as error:
        reason = str(error).splitlines()[0]
        raise UserError(f"{repo_id}: not a valid repo id or revision ({reason})") from None
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{where}: {filename} could not be fetched ({reason})") from None
    local_path = Path(local)
    parts = local_path.parts
    commit = parts[parts.index("snapshots") + 1] if "snapshots" in parts else None
    return local_path, commit


def pull_mask(
    repo_id: str,
    output: Path,
    revision: str | None = None,
    filename: str = DEFAULT_MASK_FILE,
    repo_type: str = "model",
) -> tuple[dict[str, Any], str | None]:
    """Download (or, offline, find in the cache) `filename` of a Hub repo, check it is a mask
    file and copy it to `output`; its metadata and the commit it came from."""
    from bigram_subnetworks.masks.toolkit import load_mask

    local_path, commit = hub_file(repo_id, filename, revision, repo_type)
    try:
        _, metadata = load_mask(local_path)
    except UserError as error:
        where = f"{repo_type} repo {repo_id}@{revision or 'main'}"
        raise UserError(f"{where}: {filename} is not a usable mask file ({error})") from None
    with atomic_outputs(output) as (temp,):
        shutil.copyfile(local_path, temp)
    return metadata, commit


def share_text(metadata: dict[str, Any]) -> str:
    """'kept K of N (p%)' of a mask's metadata."""
    total = metadata["total"]
    share = metadata["kept"] / total if total else math.nan
    return f"kept {metadata['kept']:,} of {total:,} ({share:.4%})"
