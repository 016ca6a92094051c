"""Issue 20: Pythia-style initialisation of the embedded models, the trained-embeddings variant
(token embeddings and unembedding only), Table 2 controls on every embedded model, and the
size-matched comparison of bigram and optimal removal."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bigram_subnetworks.config import EmbeddedModel, validate_config
from bigram_subnetworks.models.loading import load_pretrained_dir
from bigram_subnetworks.models.pretrain import (
    build_model,
    prepare_model,
    small_init_std,
    wang_init_std,
)
from bigram_subnetworks.models.variants import transplant_embeddings
from test_models import config_dict, data_dirs  # noqa: F401  (a module-scoped fixture)
from tiny_models import tiny_lm

# ------------------------------------------------------------------ Pythia's initialisation

# The default's largest embedded model (params.yaml: neox-4x96) at the default's vocabulary.
DEFAULT_SIZES = {"source": "embedded", "layers": 4, "d_model": 96, "heads": 6}


def test_the_init_formulas_are_gpt_neoxs() -> None:
    # Pythia 160M (12 layers, d 768): small_init √(2/3840) = 0.0228, wang_init 2/(12·√768).
    assert small_init_std(768) == pytest.approx(0.022822, abs=1e-6)
    assert wang_init_std(768, 12) == pytest.approx(0.0060141, abs=1e-6)


def test_embedded_models_start_with_pythias_stds_at_the_defaults_sizes() -> None:
    spec = EmbeddedModel.model_validate(DEFAULT_SIZES)
    model = build_model(spec, vocab_size=4096, seq_len=64, eos_id=0, seed=0)
    small, wang = small_init_std(96), wang_init_std(96, 4)  # 0.0645, 0.0510
    output_projections = 0
    for name, param in model.named_parameters():
        values = param.detach()
        if "layernorm" in name or "layer_norm" in name:
            expected = 1.0 if name.endswith("weight") else 0.0
            assert torch.all(values == expected), name
        elif param.ndim == 1:
            assert torch.all(values == 0), name  # biases start at zero
        else:
            is_output = name.endswith(("attention.dense.weight", "mlp.dense_4h_to_h.weight"))
            output_projections += is_output
            std = wang if is_output else small
            tolerance = 4 * std / math.sqrt(param.numel())
            assert float(values.mean()) == pytest.approx(0.0, abs=tolerance), name
            assert float(values.std()) == pytest.approx(std, rel=0.03), name
    assert output_projections == 2 * 4  # attention dense and MLP out of every layer


def test_the_pretrain_stage_saves_that_initialisation_as_step_0(
    tmp_path: Path,
    data_dirs: tuple[Path, Path],  # noqa: F811
) -> None:
    output = tmp_path / "models" / "tiny"
    cfg = validate_config(config_dict())
    prepare_model("tiny", cfg, *data_dirs, output)
    saved = load_pretrained_dir(output / "step-0").state_dict()
    spec = cfg.models["tiny"]
    vocab = saved["gpt_neox.embed_in.weight"].shape[0]
    built = build_model(spec, vocab, seq_len=32, eos_id=0, seed=cfg.seed).state_dict()
    assert saved.keys() == built.keys()
    for name, tensor in saved.items():
        assert torch.equal(tensor, built[name]), name
    dense = saved["gpt_neox.layers.0.attention.dense.weight"]
    assert float(dense.std()) == pytest.approx(wang_init_std(16, 2), rel=0.15)


# ----------------------------------------------------------- the trained-embeddings variant


def test_gpt2s_random_body_keeps_its_step_0_position_embeddings() -> None:
    """The paper patches in only the token embeddings and unembeddings (§A.4): GPT-2's position
    embeddings belong to the random body."""
    trained = tiny_lm("gpt2", d=16, layers=2, heads=2, positions=16, seed=1)
    initial = tiny_lm("gpt2", d=16, layers=2, heads=2, positions=16, seed=2)
    positions_before = initial.transformer.wpe.weight.detach().clone()
    assert not torch.equal(positions_before, trained.transformer.wpe.weight)
    transplant_embeddings(initial, trained)
    assert torch.equal(initial.transformer.wpe.weight, positions_before)
    assert torch.equal(initial.transformer.wte.weight, trained.transformer.wte.weight)
    assert torch.equal(initial.lm_head.weight, trained.lm_head.weight)  # tied to wte
