"""Model variants: the weights a mask is trained on, named by a model key `name[+variant]`.

- no variant: the model's own weights (an embedded model's `final/`, a Hub revision, a folder);
- `step-<N>`: the pretraining checkpoint of step N;
- `random-body`: the step-0 (random) body with the trained model's token embeddings and
  unembedding: the paper's Table 2 "trained embeddings" control. As in the paper, only those are
  patched in; GPT-2's position embeddings stay at their step-0 values, part of the random body.

Every variant comes with the identity stored in its masks' metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bigram_subnetworks.artifacts import RANDOM_BODY
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.models.loading import load_checkpoint, load_model, model_identity


def token_embedding_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The token embedding and unembedding parameters (each once, by name): every embedding
    parameter but GPT-2's position embedding."""
    from bigram_subnetworks.models.layout import arch_of, body, embedding_parameters

    found = embedding_parameters(model)
    if arch_of(model) != "gpt2":
        return found
    positions = {id(param) for param in body(model).wpe.parameters()}
    return {name: param for name, param in found.items() if id(param) not in positions}


@torch.no_grad()
def transplant_embeddings(target: torch.nn.Module, source: torch.nn.Module) -> None:
    """Copy the token embedding and the unembedding (unless tied to it) of `source` into `target`
    (same family and shapes); position embeddings are left as they are."""
    into, origin = token_embedding_parameters(target), token_embedding_parameters(source)
    if set(into) != set(origin):
        raise UserError(
            f"embeddings {sorted(into)} and {sorted(origin)} differ (one model ties its "
            "unembedding, the other does not); the checkpoints are not one model"
        )
    for name, param in into.items():
        if param.shape != origin[name].shape:
            raise UserError(
                f"embedding {name}: shapes {tuple(param.shape)} and "
                f"{tuple(origin[name].shape)} differ; the checkpoints are not one model"
            )
        param.copy_(origin[name])


def load_variant(
    model_dir: Path | str, variant: str | None, trust_remote_code: bool = False
) -> tuple[Any, dict[str, Any]]:
    """The model of a variant (see the module docstring) and its identity."""
    if variant is None:
        model, info = load_model(model_dir, trust_remote_code=trust_remote_code)
        return model, model_identity(model_dir, info)
    if variant.startswith("step-") and variant[5:].isdigit():
        return load_checkpoint(model_dir, int(variant[5:]), trust_remote_code=trust_remote_code)
    if variant == RANDOM_BODY:
        trained, info = load_model(model_dir, trust_remote_code=trust_remote_code)
        hybrid, identity = load_checkpoint(model_dir, 0, trust_remote_code=trust_remote_code)
        transplant_embeddings(hybrid, trained)
        return hybrid, identity | {"embeddings_from": model_identity(model_dir, info)}
    raise UserError(f"model variant {variant!r} is unknown; use step-<N> or {RANDOM_BODY}")
