"""The fetch stage: everything a run needs from the Hugging Face Hub, downloaded once.

For each Hub model of the config, the fetch job resolves its revision and every checkpoint
revision the config analyses (the step-0 one too, for the Table 2 controls) to their commits,
downloads those snapshots into one cache (`hub_cache`, shared by all jobs), and records the commits
in the model's `model.json`. It runs where the network is (a Snakemake local rule); every other
job then reads the cache with the Hub offline (`HF_HUB_OFFLINE=1`), so compute nodes without
internet work. Local model folders are checked and recorded by the same stage.

With the Hub unreachable (or `HF_HUB_OFFLINE=1`) the fetch job resolves revisions from the cache
itself, so a pre-filled cache (copied from a machine with internet) works too.

Per revision, `model.json` records the sha256 of every weight file (`models.weights`). A revision
without safetensors has its pickled `pytorch_model*.bin` files downloaded, read weights-only and
converted to safetensors once, beside the cache; the record names the converted folder, which
every job loads. A revision with neither format stops the fetch. Two checkpoint steps that share a
weight file (the whole model or one shard: a branch serving another step's weights) stop it too,
unless `checkpoints.duplicate_steps` is `drop`: then model.json lists the dropped steps (all but
the final step, else the latest, of each group), which the checkpoint analysis leaves out and the
report names.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from bigram_subnetworks.config import Config, HuggingFaceModel, LocalModel
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import atomic_outputs, write_json
from bigram_subnetworks.models.weights import (
    PICKLE,
    PICKLE_FILES,
    SAFETENSORS,
    convert,
    converted_folder,
    duplicate_sets,
    hashes,
    shared_files,
    weight_files,
)

log = logging.getLogger(__name__)

# The files of a snapshot a model needs (weights, configs, tokenizer); never pickles.
SNAPSHOT_FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]


def use_hub_cache(cache: str | Path, offline: bool) -> None:
    """Point huggingface_hub (and so transformers) at the run's cache, offline unless the stage
    needs the network. Call before anything imports huggingface_hub."""
    os.environ["HF_HUB_CACHE"] = str(Path(cache).resolve())
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"


def checkpoint_steps_of(cfg: Config, name: str) -> list[int]:
    """The training steps whose checkpoints the config analyses for a model."""
    if cfg.checkpoints is None or name not in cfg.checkpoints.models:
        return []
    return sorted(cfg.checkpoints.steps)


def snapshot(
    model_id: str, revision: str, cache: Path, patterns: list[str] = SNAPSHOT_FILES
) -> Path:
    """Download (or find in the cache) the files of one revision's snapshot that match
    `patterns`; its folder name is the commit."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    where = "in the cache (offline)" if offline else "on the Hub"
    try:
        path = snapshot_download(
            model_id,
            revision=revision,
            cache_dir=cache,
            allow_patterns=patterns,
            local_files_only=offline,
        )
    except RevisionNotFoundError:
        raise UserError(
            f"model {model_id}: revision {revision!r} not found {where}; check the revision"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(f"model {model_id}: no such repository {where}; check the id") from None
    except LocalEntryNotFoundError:
        raise UserError(
            f"model {model_id}: revision {revision!r} not found {where} and the Hub is not "
            f"reachable; fetch it where there is network (cache: {cache})"
        ) from None
    except OSError as error:
        raise UserError(
            f"model {model_id}@{revision}: download failed ({type(error).__name__}); check the "
            "network and the disk"
        ) from None
    return Path(path)


def fetch_revision(model_id: str, revision: str, cache: Path) -> dict[str, Any]:
    """Download one revision and describe its weights: format and each file's sha256 (pickled
    weights are converted later, by `convert_revision`, once the steps are checked)."""
    folder = snapshot(model_id, revision, cache)
    commit = folder.name
    record: dict[str, Any] = {"revision": revision, "commit": commit}
    names = weight_files(folder, *SAFETENSORS)
    if names is not None:
        return record | {"weights": {"format": "safetensors", "files": hashes(folder, names)}}
    folder = snapshot(model_id, revision, cache, PICKLE_FILES)
    names = weight_files(folder, *PICKLE)
    if names is None:
        found = sorted(p.name for p in folder.iterdir())
        raise UserError(
            f"model {model_id}: revision {revision!r} (commit {commit[:12]}) holds no weights, "
            f"neither {SAFETENSORS[0]} nor {PICKLE[0]} nor a sharded index of either (found: "
            f"{', '.join(found) or 'no files'}); check the revision"
        )
    return record | {"weights": {"format": "pytorch", "files": hashes(folder, names)}}


def convert_revision(model_id: str, record: dict[str, Any], cache: Path) -> dict[str, Any]:
    """A fetched revision's record, its pickled weights converted to safetensors (once) into a
    folder beside the cache that every job loads; safetensors revisions as they are."""
    weights = record["weights"]
    if weights["format"] != "pytorch":
        return record
    snapshot_dir = cache / f"models--{model_id.replace('/', '--')}" / "snapshots" / record["commit"]
    target = converted_folder(cache, model_id, record["commit"])
    shown = f"model {model_id}@{record['revision']}"
    outputs = convert(snapshot_dir, sorted(weights["files"]), weights["files"], target, shown)
    log.info("%s: %d pickled weight file(s) -> safetensors in %s", shown, len(outputs), target)
    converted = {"folder": str(target), "files": outputs}
    return record | {"weights": weights | {"converted": converted}}


def duplicate_steps(
    model_id: str, files_by_step: dict[int, dict[str, str]], final: int | None, mode: str
) -> dict[str, dict[str, Any]]:
    """The checkpoint steps to drop because they share a weight file with another step: in
    `stop` mode any shared file stops the fetch in one line; in `drop` mode each group of steps
    sharing files keeps its final step (else its latest) and the others are returned."""
    shared = shared_files(files_by_step)
    if not shared:
        return {}
    if mode != "drop":
        found = "; ".join(
            f"steps {', '.join(map(str, steps))} share {name} (sha256 {digest})"
            for steps, name, digest in shared
        )
        raise UserError(
            f"model {model_id}: checkpoint revisions serve identical weights, {found}; remove "
            "the wrong steps from checkpoints.steps (or fix their revisions), or set "
            "checkpoints.duplicate_steps: drop"
        )
    dropped: dict[str, dict[str, Any]] = {}
    for group in duplicate_sets(shared):
        kept = final if final in group else max(group)
        for step in sorted(group - {kept}):
            steps, name, digest = next(entry for entry in shared if step in entry[0])
            others = [s for s in steps if s != step]
            dropped[str(step)] = {
                "kept": kept,
                "shares_with": others,
                "file": name,
                "sha256": digest,
            }
    if "0" in dropped:
        why = dropped["0"]
        raise UserError(
            f"model {model_id}: checkpoint step 0 serves the weights of step "
            f"{why['shares_with'][0]} ({why['file']}, sha256 {why['sha256']}); the "
            "random-initialisation controls need step 0's own weights: fix its revision "
            "(checkpoint_revisions)"
        )
    return dropped


def fetch_hub_model(
    name: str, spec: HuggingFaceModel, steps: list[int], cache: Path, duplicates: str = "stop"
) -> dict:
    """Resolve and download a Hub model's revision and checkpoint revisions, check that
    different steps serve different weights, then convert pickled weights; model.json's info."""
    main = fetch_revision(spec.id, spec.revision, cache)
    checkpoints: dict[str, dict[str, Any]] = {}
    for step in steps:
        checkpoints[str(step)] = fetch_revision(spec.id, spec.revision_of(step), cache)
        commit = checkpoints[str(step)]["commit"]
        log.info("%s: checkpoint step %d = %s@%s", name, step, spec.revision_of(step), commit[:12])
    files = {int(step): record["weights"]["files"] for step, record in checkpoints.items()}
    final = spec.final_step
    if steps and final is not None:
        files.setdefault(final, main["weights"]["files"])  # the model's revision is its final step
    dropped = duplicate_steps(spec.id, files, final, duplicates) if steps else {}
    for step, why in dropped.items():
        log.warning(
            "%s: checkpoint step %s dropped: it serves the weights of step %d (%s, sha256 %s); "
            "remove it from checkpoints.steps to skip its mask jobs",
            name,
            step,
            why["kept"],
            why["file"],
            why["sha256"][:12],
        )
    main = convert_revision(spec.id, main, cache)
    checkpoints = {step: convert_revision(spec.id, rec, cache) for step, rec in checkpoints.items()}
    log.info("%s: %s@%s = %s, in %s", name, spec.id, spec.revision, main["commit"][:12], cache)
    return {
        "source": "huggingface",
        "id": spec.id,
        "revision": spec.revision,
        "commit": main["commit"],
        "weights": main["weights"],
        "checkpoint_revision": spec.checkpoint_revision,
        "checkpoints": checkpoints,
        "dropped_steps": dropped,
        "cache": str(cache),
    }


def run_stage(cfg: Config, *, model: str, model_dir: Path) -> None:
    """The fetch stage of one Hub or local model: `model.json` (and, for Hub models, the cache)."""
    from bigram_subnetworks.models.loading import MODEL_FILE, describe_local_model

    spec = cfg.models[model]
    if isinstance(spec, HuggingFaceModel):
        steps = checkpoint_steps_of(cfg, model)
        duplicates = cfg.checkpoints.duplicate_steps if steps else "stop"
        info = fetch_hub_model(model, spec, steps, Path(cfg.hub_cache), duplicates)
    elif isinstance(spec, LocalModel):
        info = describe_local_model(spec)
    else:
        raise UserError(f"models.{model}: an embedded model is trained by the pretrain stage")
    info |= {"name": model, "final_step": spec.final_step}
    with atomic_outputs(model_dir / MODEL_FILE) as (temp,):
        write_json(info, temp)
    log.info("%s: recorded -> %s", model, model_dir / MODEL_FILE)


def cached_file(cfg: Config, repo_id: str, revision: str, filename: str) -> Path | None:
    """A file of a Hub repository's revision in the run's cache, when it is there (no network)."""
    folder = Path(cfg.hub_cache) / f"models--{repo_id.replace('/', '--')}"
    ref = folder / "refs" / revision
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else revision
    path = folder / "snapshots" / commit / filename
    return path if path.is_file() else None
