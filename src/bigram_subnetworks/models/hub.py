"""The fetch stage: everything a run needs from the Hugging Face Hub, downloaded once.

For each Hub model of the config, the fetch job resolves its revision and every checkpoint
revision the config analyses (the step-0 one too, for the Table 2 controls) to their commits,
downloads those snapshots into one cache (`hub_cache`, shared by all jobs), and records the commits
in the model's `model.json`. It runs where the network is (a Snakemake local rule); every other
job then reads the cache with the Hub offline (`HF_HUB_OFFLINE=1`), so compute nodes without
internet work. Local model folders are checked and recorded by the same stage.

With the Hub unreachable (or `HF_HUB_OFFLINE=1`) the fetch job resolves revisions from the cache
itself, so a pre-filled cache (copied from a machine with internet) works too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from bigram_subnetworks.config import Config, HuggingFaceModel, LocalModel
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import atomic_outputs, write_json

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


def snapshot(model_id: str, revision: str, cache: Path) -> Path:
    """Download (or find in the cache) one revision's snapshot; its folder name is the commit."""
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
            allow_patterns=SNAPSHOT_FILES,
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


def fetch_hub_model(name: str, spec: HuggingFaceModel, steps: list[int], cache: Path) -> dict:
    """Resolve and download a Hub model's revision and checkpoint revisions; model.json's info."""
    commit = snapshot(spec.id, spec.revision, cache).name
    checkpoints: dict[str, dict[str, str]] = {}
    for step in steps:
        revision = spec.revision_of(step)
        commit_of_step = snapshot(spec.id, revision, cache).name
        checkpoints[str(step)] = {"revision": revision, "commit": commit_of_step}
        log.info("%s: checkpoint step %d = %s@%s", name, step, revision, commit_of_step[:12])
    log.info("%s: %s@%s = %s, in %s", name, spec.id, spec.revision, commit[:12], cache)
    return {
        "source": "huggingface",
        "id": spec.id,
        "revision": spec.revision,
        "commit": commit,
        "checkpoint_revision": spec.checkpoint_revision,
        "checkpoints": checkpoints,
        "cache": str(cache),
    }


def run_stage(cfg: Config, *, model: str, model_dir: Path) -> None:
    """The fetch stage of one Hub or local model: `model.json` (and, for Hub models, the cache)."""
    from bigram_subnetworks.models.loading import MODEL_FILE, describe_local_model

    spec = cfg.models[model]
    if isinstance(spec, HuggingFaceModel):
        info = fetch_hub_model(model, spec, checkpoint_steps_of(cfg, model), Path(cfg.hub_cache))
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
