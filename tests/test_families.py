"""The Llama-style families (Llama, Mistral, Qwen2, Qwen3, OLMo-2, OLMo-3, Gemma, Gemma-2,
Gemma-3 text): which weights are masked, what their blocks are, proven by what zeroing them does,
and that mask training and evaluation see the family's real logits (Gemma-2's soft-cap included).

Every family is built as a tiny random model (d = 32, 2 layers, 4 query heads sharing 2 key/value
heads, MLP width 48, vocabulary 64) with every parameter seeded N(0, 0.5²). Qwen3 and Gemma-2 use a
head_dim of 12, not d/h = 8, as their real checkpoints do; Llama ties its LM head to the token
embedding (as Llama-3.2-1B does), Gemma ties by default; Gemma-2's final logit soft-cap is 3 (real
checkpoints: 30) so that it bends the logits a lot.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bigram_subnetworks.config import MaskSettings
from bigram_subnetworks.data.bigrams import BigramCounts, count_bigrams
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.masks.losses import (
    BigramTarget,
    bigram_cross_entropy,
    dense_bigram_cross_entropy,
    dense_bigram_matrix,
)
from bigram_subnetworks.masks.toolkit import keep_all, load_mask
from bigram_subnetworks.masks.train import MaskedLM, MaskRun, train_mask
from bigram_subnetworks.models.families import (
    FAMILIES,
    SUPPORTED,
    check_config_json,
    check_supported,
    family_name,
)
from bigram_subnetworks.models.layout import (
    BLOCK_KINDS,
    Block,
    Layout,
    block_modules,
    body,
    embedding_parameters,
    final_norm,
    input_embedding,
    layout_of,
    logit_softcap,
    output_logits,
    ties_embeddings,
    unembedding,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

VOCAB, D, LAYERS, HEADS, KV_HEADS, FF = 64, 32, 2, 4, 2, 48
CPU = torch.device("cpu")
# model_type -> config overrides beyond the common tiny shape.
FAMILY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {"tie_word_embeddings": True},
    "mistral": {},
    "qwen2": {},  # q/k/v biases
    "qwen3": {"head_dim": 12},  # per-head q_norm/k_norm
    "olmo2": {},  # q_norm/k_norm over all heads at once
    "olmo3": {},
    "gemma": {},
    "gemma2": {"head_dim": 12, "final_logit_softcapping": 3.0},
    "gemma3_text": {},
}
LLAMA_STYLE = list(FAMILY_CONFIGS)
NORMS_ACROSS_HEADS = {"olmo2", "olmo3"}  # q_norm/k_norm act on the whole q_proj/k_proj output
MATRICES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def head_dim_of(model_type: str) -> int:
    return FAMILY_CONFIGS[model_type].get("head_dim", D // HEADS)


def expected_masked(model_type: str) -> int:
    """L·(d·h·hd [Q] + 2·d·kv·hd [K, V] + h·hd·d [O] + 3·d·ff [gate, up, down])."""
    hd = head_dim_of(model_type)
    return LAYERS * (D * HEADS * hd + 2 * D * KV_HEADS * hd + HEADS * hd * D + 3 * D * FF)


def build(model_type: str, seed: int = 0) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = {
        "vocab_size": VOCAB,
        "hidden_size": D,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "intermediate_size": FF,
        "max_position_embeddings": 64,
        "head_dim": D // HEADS,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 0,
    }
    config = AutoConfig.for_model(model_type, **(shape | FAMILY_CONFIGS[model_type]))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    """One seeded tiny model per family (read-only: copy before editing)."""
    return {model_type: build(model_type) for model_type in LLAMA_STYLE}


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(7))


# --- the torch-free family list -----------------------------------------------------------------


def test_family_list_is_torch_free_and_matches_transformers() -> None:
    """families.py imports without torch; every family has a layout and the causal LM class
    transformers' AutoModelForCausalLM uses for it."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from bigram_subnetworks.models import layout

    code = (
        "import sys; from bigram_subnetworks.models import families; "
        "families.check_supported('gemma2'); assert 'torch' not in sys.modules, 'torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert set(layout.SUPPORTED) == set(FAMILIES) == set(SUPPORTED)
    assert set(LLAMA_STYLE) | {"gpt_neox", "gpt2"} == set(FAMILIES)
    for model_type, family in FAMILIES.items():
        assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type] == family.causal_lm
        assert layout.SUPPORTED[model_type] == family.causal_lm
    assert family_name("gemma3_text") == "Gemma-3 (text)"


def test_unsupported_families_are_refused_in_one_line(tmp_path: Path) -> None:
    for model_type in ("mamba", None, 3, "gemma3", "phi3"):
        with pytest.raises(UserError, match="not supported") as info:
            check_supported(model_type)
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"supported families: GPT-NeoX \(Pythia\) \(gpt_neox\)"):
        check_supported("mamba")
    with pytest.raises(UserError, match=r"Llama \(llama\).*Gemma-2 \(gemma2\)"):
        check_supported("bert")
    with pytest.raises(UserError, match="use a text-only Gemma-3"):
        check_supported("gemma3")
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    assert check_config_json(tmp_path / "ok") == "qwen3"
    (tmp_path / "other.json").write_text(json.dumps({"model_type": "mamba"}))
    (tmp_path / "bare.json").write_text(json.dumps({"hidden_size": 3}))
    (tmp_path / "broken.json").write_text("{")
    cases = {
        "other.json": "'mamba': not supported",
        "bare.json": "no model_type",
        "broken.json": "not a readable config.json",
        "missing.json": "not found",
    }
    for name, message in cases.items():
        with pytest.raises(UserError, match=message) as info:
            check_config_json(tmp_path / name)
        assert "\n" not in str(info.value)


# --- what is masked -----------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", LLAMA_STYLE)
def test_masked_parameters_and_counts(model_type: str, models: dict[str, Any]) -> None:
    """Exactly the seven matrices per layer are masked, with the count of `expected_masked`;
    embeddings, norms (q_norm/k_norm too) and biases never are."""
    model = models[model_type]
    layout = layout_of(model)
    hd = head_dim_of(model_type)
    assert (layout.n_layers, layout.n_heads, layout.n_kv_heads) == (LAYERS, HEADS, KV_HEADS)
    assert (layout.d_model, layout.d_ff, layout.head_size, layout.group_size) == (D, FF, hd, 2)
    assert layout.family == FAMILIES[model_type].name
    params = dict(model.named_parameters())
    matrices = [n for n in params if n.rsplit(".", 2)[-2] in MATRICES and n.endswith(".weight")]
    assert list(layout.masked) == matrices and len(matrices) == 7 * LAYERS
    assert layout.n_masked == expected_masked(model_type)
    assert layout.n_masked == sum(params[n].numel() for n in layout.masked)
    assert all(layout.shapes[n] == tuple(params[n].shape) for n in layout.masked)
    unmasked = set(params) - set(layout.masked)
    assert "model.embed_tokens.weight" in unmasked and "model.norm.weight" in unmasked
    if model_type in ("qwen3", "olmo2", "olmo3", "gemma3_text"):
        assert "model.layers.0.self_attn.q_norm.weight" in unmasked
    if model_type == "qwen2":
        assert "model.layers.0.self_attn.q_proj.bias" in unmasked
    assert not any(n.endswith("bias") or "norm" in n or "embed" in n for n in layout.masked)
    assert layout.params(1, "MLP-in") == [
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
    ]
    assert layout.param(1, "MLP-gate") == "model.layers.1.mlp.gate_proj.weight"
    assert layout.layer_params(0) == [n for n in layout.masked if ".0." in n]


def test_formula_values() -> None:
    """The formula, spelt out: 2·(32·32 + 2·32·16 + 32·32 + 3·32·48) = 15360 with head_dim 8;
    2·(32·48 + 2·32·24 + 48·32 + 3·32·48) = 18432 with head_dim 12."""
    assert expected_masked("llama") == 15360
    assert expected_masked("gemma2") == expected_masked("qwen3") == 18432


def test_layout_refusals(models: dict[str, Any]) -> None:
    """Ambiguous kinds, bad heads and mismatched weights give one-line UserErrors."""
    model = copy.deepcopy(models["llama"])
    layout = layout_of(model)
    calls: list[tuple[Callable[[], object], str]] = [
        (lambda: layout.param(0, "MLP-in"), "held by 2 matrices"),
        (lambda: layout.params(0, "QKV"), "unknown for a Llama model"),
        (lambda: layout.kv_head_blocks(0, KV_HEADS), "key/value heads 0..1"),
        (lambda: layout.head_blocks(0, HEADS), "out of range"),
        (lambda: layout.head_blocks(0, 0, "QM"), "not a head kind"),
        (lambda: layout.kv_head_of(-1), "out of range"),
    ]
    for call, message in calls:
        with pytest.raises(UserError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    attention = block_modules(model)[1].self_attn
    attention.k_proj.weight = torch.nn.Parameter(torch.zeros(24, D))
    with pytest.raises(UserError, match=r"layers\.1\.self_attn\.k_proj\.weight: expected"):
        layout_of(model)
    model.config.num_key_value_heads = 3
    with pytest.raises(UserError, match="not a multiple of 3 key/value heads"):
        layout_of(model)


# --- blocks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["llama", "gemma2"])
def test_blocks_tile_every_masked_entry_once(model_type: str, models: dict[str, Any]) -> None:
    """blocks(): per layer Q, K, V, O, MLP-in (gate_proj), MLP-in (up_proj), MLP-out, covering
    every entry once; Q and O blocks of the query heads and K and V blocks of the key/value heads
    partition their layer blocks; head_blocks' K and V are those of the head's key/value head."""
    layout = layout_of(models[model_type])
    blocks = layout.blocks()
    kinds = ["Q", "K", "V", "O", "MLP-in", "MLP-in", "MLP-out"]
    assert [(b.layer, b.kind) for b in blocks] == [(i, k) for i in range(LAYERS) for k in kinds]
    assert {b.kind for b in blocks} == set(BLOCK_KINDS)
    assert [b.param for b in blocks] == list(layout.masked)
    seen = {n: torch.zeros(s, dtype=torch.int64) for n, s in layout.shapes.items()}
    for block in blocks:
        seen[block.param][block.index()] += 1
    assert all(bool((t == 1).all()) for t in seen.values())

    def count(blocks: list[Block]) -> dict[str, torch.Tensor]:
        grid = {n: torch.zeros(s, dtype=torch.int64) for n, s in layout.shapes.items()}
        for block in blocks:
            grid[block.param][block.index()] += 1
        return grid

    for layer in range(LAYERS):
        own = count([b for h in range(HEADS) for b in layout.head_blocks(layer, h, "QO")])
        shared = count([b for g in range(KV_HEADS) for b in layout.kv_head_blocks(layer, g)])
        for kind, grid in (("Q", own), ("O", own), ("K", shared), ("V", shared)):
            assert bool((grid[layout.param(layer, kind)] == 1).all()), kind
        for head in range(HEADS):
            blocks_of = layout.head_blocks(layer, head)
            assert [b.kind for b in blocks_of] == ["Q", "K", "V", "O"]
            kv = layout.kv_head_blocks(layer, layout.kv_head_of(head))
            for mine, theirs in zip(blocks_of[1:3], kv, strict=True):
                assert mine.param == theirs.param and torch.equal(mine.rows, theirs.rows)
        units = layout.mlp_unit_blocks(layer, [1, 5])
        assert [b.kind for b in units] == ["MLP-in", "MLP-in", "MLP-out"]
        assert [b.size for b in units] == [2 * D] * 3
    assert [layout.kv_head_of(h) for h in range(HEADS)] == [0, 0, 1, 1]


# --- behaviour: zeroing a block does what its name says -----------------------------------------


@contextmanager
def hooked(
    module: torch.nn.Module, pre: bool = False, edit: Callable[[torch.Tensor], None] | None = None
) -> Iterator[list[torch.Tensor]]:
    """Record a module's first input (pre=True) or its output; `edit` may change it in place."""
    seen: list[torch.Tensor] = []

    def record(x: torch.Tensor) -> None:
        if edit is not None:
            edit(x)
        seen.append(x.detach().clone())

    if pre:
        handle = module.register_forward_pre_hook(lambda _m, args: record(args[0]))
    else:
        handle = module.register_forward_hook(lambda _m, _a, out: record(out))
    try:
        yield seen
    finally:
        handle.remove()


def attn(model: Any, layer: int) -> Any:
    return block_modules(model)[layer].self_attn


def heads_and_probs(model: Any, layer: int, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The o_proj input as (batch, seq, heads, head_dim), and the attention probabilities."""
    with torch.no_grad(), hooked(attn(model, layer).o_proj, pre=True) as seen:
        probs = model(ids, output_attentions=True).attentions[layer]
    x = seen[0]
    return x.reshape(*x.shape[:-1], HEADS, -1), probs


def zeroed(model: Any, blocks: list[Block], bias: bool = True) -> Any:
    """A copy of the model with the blocks' entries zeroed (and, with `bias`, the biases of
    their output features, where the matrix has one)."""
    edited = copy.deepcopy(model)
    with torch.no_grad():
        for block in blocks:
            edited.get_parameter(block.param)[block.index()] = 0.0
            bias_name = block.param.removesuffix("weight") + "bias"
            if bias and block.kind in "QKV" and bias_name in dict(edited.named_parameters()):
                assert block.rows is not None
                edited.get_parameter(bias_name)[block.rows] = 0.0
    return edited


@pytest.mark.parametrize("model_type", LLAMA_STYLE)
def test_head_blocks_act_on_their_heads(
    model_type: str, models: dict[str, Any], ids: torch.Tensor
) -> None:
    """V of key/value head g silences exactly its query heads; K of g makes exactly them attend
    uniformly; Q of query head i makes i attend uniformly (and, except where q_norm spans all
    heads, changes nothing else); O of head i equals dropping i's slice of the o_proj input."""
    model = models[model_type]
    layout = layout_of(model)
    hd = layout.head_size
    causal = torch.tril(torch.ones(ids.shape[1], ids.shape[1]))
    uniform = causal / causal.sum(-1, keepdim=True)
    for layer in range(LAYERS):
        heads, probs = heads_and_probs(model, layer, ids)
        for g in range(KV_HEADS):
            group = [h for h in range(HEADS) if layout.kv_head_of(h) == g]
            others = [h for h in range(HEADS) if h not in group]
            k_block, v_block = layout.kv_head_blocks(layer, g)
            after, probs_after = heads_and_probs(zeroed(model, [v_block]), layer, ids)
            assert torch.all(after[:, :, group] == 0)
            assert torch.equal(after[:, :, others], heads[:, :, others])
            assert torch.equal(probs_after, probs)
            after, probs_after = heads_and_probs(zeroed(model, [k_block]), layer, ids)
            for h in group:
                torch.testing.assert_close(probs_after[:, h], uniform.expand_as(probs[:, h]))
            if model_type not in NORMS_ACROSS_HEADS:
                assert torch.equal(probs_after[:, others], probs[:, others])
                assert torch.equal(after[:, :, others], heads[:, :, others])
        for head in range(HEADS):
            others = [h for h in range(HEADS) if h != head]
            (q_block,) = layout.head_blocks(layer, head, "Q")
            after, probs_after = heads_and_probs(zeroed(model, [q_block]), layer, ids)
            torch.testing.assert_close(probs_after[:, head], uniform.expand_as(probs[:, head]))
            assert (probs[:, head] - uniform).abs().max() > 1e-3  # it was not uniform before
            if model_type in NORMS_ACROSS_HEADS:  # documented: the others' queries rescale
                assert not torch.equal(probs_after[:, others], probs[:, others])
            else:
                assert torch.equal(probs_after[:, others], probs[:, others])
                assert torch.equal(after[:, :, others], heads[:, :, others])

            def drop(x: torch.Tensor, head: int = head) -> None:
                x[..., head * hd : (head + 1) * hd] = 0.0

            o_proj = attn(model, layer).o_proj
            with torch.no_grad(), hooked(o_proj, pre=True, edit=drop), hooked(o_proj) as expect:
                model(ids)
            edited = zeroed(model, layout.head_blocks(layer, head, "O"))
            with torch.no_grad(), hooked(attn(edited, layer).o_proj) as result:
                edited(ids)
            torch.testing.assert_close(result[0], expect[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_type", LLAMA_STYLE)
def test_mlp_unit_blocks_act_on_their_units(
    model_type: str, models: dict[str, Any], ids: torch.Tensor
) -> None:
    """MLP-in of units U (gate_proj and up_proj rows) zeroes exactly U's inputs to down_proj;
    MLP-out of U (down_proj columns) equals dropping those inputs."""
    model = models[model_type]
    layout = layout_of(model)
    units, others = [0, 7, 30], [u for u in range(FF) if u not in (0, 7, 30)]
    for layer in range(LAYERS):
        down = block_modules(model)[layer].mlp.down_proj
        with torch.no_grad(), hooked(down, pre=True) as before, hooked(down) as full:
            model(ids)
        *mlp_in, mlp_out = layout.mlp_unit_blocks(layer, units)
        edited = zeroed(model, mlp_in)
        with torch.no_grad(), hooked(block_modules(edited)[layer].mlp.down_proj, pre=True) as seen:
            edited(ids)
        assert torch.all(seen[0][..., units] == 0)
        assert torch.equal(seen[0][..., others], before[0][..., others])
        assert before[0][..., units].std() > 0.01

        def drop(x: torch.Tensor) -> None:
            x[..., units] = 0.0

        with torch.no_grad(), hooked(down, pre=True, edit=drop), hooked(down) as expect:
            model(ids)
        edited = zeroed(model, [mlp_out])
        with torch.no_grad(), hooked(block_modules(edited)[layer].mlp.down_proj) as result:
            edited(ids)
        torch.testing.assert_close(result[0], expect[0], rtol=0, atol=1e-5)
        assert not torch.allclose(full[0], expect[0], atol=1e-3)


# --- logits, the bigram loss, embeddings --------------------------------------------------------


@pytest.fixture(scope="module")
def sequences() -> np.ndarray:
    """Sequences of a sparse random bigram process over the tiny vocabulary; 3 tokens never
    occur as a context (their rows back off to the unigram)."""
    rng = np.random.default_rng(0)
    successors = rng.integers(0, VOCAB - 3, size=(VOCAB, 3))
    rows = np.empty((48, 12), dtype=np.uint32)
    rows[:, 0] = rng.integers(0, VOCAB - 3, size=48)
    for t in range(1, rows.shape[1]):
        rows[:, t] = successors[rows[:, t - 1], rng.integers(0, 3, size=48)]
    return rows


@pytest.fixture(scope="module")
def counts(sequences: np.ndarray) -> BigramCounts:
    return count_bigrams(sequences[:40], VOCAB)


@pytest.mark.parametrize("model_type", LLAMA_STYLE)
def test_masked_lm_reproduces_the_model_and_the_dense_bigram_loss(
    model_type: str, models: dict[str, Any], counts: BigramCounts, ids: torch.Tensor
) -> None:
    """With an all-ones mask MaskedLM gives the model's own logits (soft-capped for Gemma-2), the
    fast bigram loss equals the dense reference through those logits, and so does the per-position
    expected logit that evaluation uses (a target built from MaskedLM.unembed, no cap passed)."""
    model = models[model_type]
    lm = MaskedLM(model, VOCAB)
    assert lm.logit_softcap == FAMILY_CONFIGS[model_type].get("final_logit_softcapping")
    ones = {n: m.float() for n, m in keep_all(lm.layout).items()}
    with torch.no_grad():
        reference = model(ids).logits
        hidden = lm.hidden(ids, ones)
        logits = lm.logits(hidden)
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lm.teacher_logits(ids), reference, rtol=1e-5, atol=1e-5)
    target = BigramTarget.build(counts, lm.unembed, lm.unembed_bias)
    assert (target.capped is not None) == (model_type == "gemma2")
    dense = dense_bigram_matrix(counts)
    expected_ce = dense_bigram_cross_entropy(reference.double(), ids, dense)
    fast = bigram_cross_entropy(hidden, ids, lm.unembed, target, lm.unembed_bias)
    assert float(fast) == pytest.approx(float(expected_ce), rel=1e-5)
    per_position = torch.logsumexp(logits.double(), -1) - target.expected_logit(hidden, ids)
    assert float(per_position.mean()) == pytest.approx(float(expected_ce), rel=1e-5)
    if model_type == "gemma2":  # the linear formula would be wrong here: the cap matters
        linear = BigramTarget.build(counts, lm.unembed.clone(), lm.unembed_bias)
        assert linear.capped is None
        wrong = bigram_cross_entropy(hidden, ids, lm.unembed.clone(), linear)
        assert abs(float(wrong) - float(expected_ce)) > 0.05


def test_soft_capped_loss_gradients_match_the_dense_reference(
    models: dict[str, Any], counts: BigramCounts, ids: torch.Tensor
) -> None:
    """Gradients of the soft-capped bigram loss equal the dense reference's, in float64."""
    lm = MaskedLM(models["gemma2"], VOCAB)
    unembed = lm.unembed.double()
    target = BigramTarget.build(counts, unembed, softcap=lm.logit_softcap)
    assert target.capped is not None and target.capped.value.dtype == torch.float64
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 9, D, dtype=torch.float64, generator=generator) * 3
    fast_h = hidden.clone().requires_grad_(True)
    bigram_cross_entropy(fast_h, ids, unembed, target).backward()
    dense_h = hidden.clone().requires_grad_(True)
    logits = torch.tanh((dense_h @ unembed.T) / 3.0) * 3.0
    dense_bigram_cross_entropy(logits, ids, dense_bigram_matrix(counts)).backward()
    torch.testing.assert_close(fast_h.grad, dense_h.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("model_type", LLAMA_STYLE)
def test_accessors_embeddings_and_residual_hooks(
    model_type: str, models: dict[str, Any], ids: torch.Tensor
) -> None:
    """body/final_norm/block_modules point at the model's modules; the final norm's input is the
    pre-norm residual, and output_logits of its output are the model's logits (soft-capped for
    Gemma-2); embedding_parameters lists each
    distinct embedding parameter once (one for a tied head) and transplants them exactly."""
    from bigram_subnetworks.analysis.residual import residual_states

    model = models[model_type]
    assert body(model) is model.model and len(block_modules(model)) == LAYERS
    tied = bool(model.config.tie_word_embeddings)
    assert ties_embeddings(model) == tied
    assert unembedding(model).shape == input_embedding(model).shape == (VOCAB, D)
    assert logit_softcap(model) == FAMILY_CONFIGS[model_type].get("final_logit_softcapping")
    with torch.no_grad(), hooked(final_norm(model), pre=True) as pre:
        out = body(model)(input_ids=ids)
    torch.testing.assert_close(final_norm(model)(pre[0]), out.last_hidden_state)
    with torch.no_grad():
        logits = output_logits(model, final_norm(model)(pre[0]))
        torch.testing.assert_close(logits, model(ids).logits, rtol=1e-6, atol=1e-6)
    states = residual_states(model, ids)
    assert states.shape == (LAYERS + 1, ids.numel(), D)
    torch.testing.assert_close(states[-1], pre[0].reshape(-1, D))

    names = ["model.embed_tokens.weight"] + ([] if tied else ["lm_head.weight"])
    assert list(embedding_parameters(model)) == names
    target, source = build(model_type, seed=1), model
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    copied = embedding_parameters(target)
    with torch.no_grad():
        for name, param in embedding_parameters(source).items():
            copied[name].copy_(param)
    assert torch.equal(input_embedding(target), input_embedding(source))
    assert torch.equal(unembedding(target), unembedding(source))
    for name, param in target.named_parameters():
        if name not in names:
            assert torch.equal(param, before[name]), name


def test_embedding_parameters_of_the_original_architectures(
    tiny_loaded_models: dict[str, Any],
) -> None:
    """GPT-2 ties its head and has position embeddings; GPT-NeoX has two separate tables; neither
    soft-caps its logits."""
    gpt2, neox = tiny_loaded_models["gpt2"], tiny_loaded_models["gpt_neox"]
    assert list(embedding_parameters(gpt2)) == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert list(embedding_parameters(neox)) == ["gpt_neox.embed_in.weight", "lm_head.weight"]
    assert ties_embeddings(gpt2) and not ties_embeddings(neox)
    assert logit_softcap(gpt2) is None and logit_softcap(neox) is None
    ids = torch.arange(10)[None]
    for model in (gpt2, neox):
        with torch.no_grad():
            hidden = body(model)(input_ids=ids).last_hidden_state
            torch.testing.assert_close(output_logits(model, hidden), model(ids).logits)


# --- training and evaluation through the project's API ------------------------------------------


def settings() -> MaskSettings:
    return MaskSettings.model_validate(
        {"lr": 0.1, "temp_increase": 1.2, "batch_size": 8, "max_steps": 12, "save_every": 5}
    )


@pytest.mark.parametrize("model_type", ["llama", "gemma2"])
def test_train_and_evaluate_a_mask(
    model_type: str,
    models: dict[str, Any],
    sequences: np.ndarray,
    counts: BigramCounts,
    tmp_path: Path,
) -> None:
    """train_mask writes a mask of the family's layout whose bigram loss falls; evaluate_model
    scores it, with the full model's metrics equal to those of its own (capped) logits."""
    from bigram_subnetworks.analysis.scoring import MaskFile, evaluate_model

    model = copy.deepcopy(models[model_type])
    layout = layout_of(model)
    path = tmp_path / "bigram" / "lambda-0.safetensors"
    run = MaskRun("bigram", "0", settings(), seed=0, model_info={"model": model_type})
    mask, meta = train_mask(model, run, sequences[:40], counts, path, CPU)
    assert list(mask) == list(layout.masked) and meta["steps"] > 0
    losses = json.loads(path.with_suffix(".json").read_text())["history"][-1]["loss"]
    assert losses[-1] < losses[0]
    load_mask(path, layout)

    held_out = sequences[40:].astype(np.int64)
    mask_file = MaskFile(model_type, "bigram", "0", path)
    rows, blocks = evaluate_model(model_type, model, [mask_file], counts, held_out, 4, CPU)
    table = {(r["target"], r["lambda"], r["metric"]): r["value"] for r in rows}
    tokens = torch.from_numpy(held_out)
    with torch.no_grad():
        logits = model(tokens).logits[:, :-1].double()
    nll = -torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None])
    assert table["reference", "neginf", "lm_loss"] == pytest.approx(float(nll.mean()), rel=1e-5)
    dense = dense_bigram_cross_entropy(logits, tokens[:, :-1], dense_bigram_matrix(counts))
    assert table["reference", "neginf", "bigram_cross_entropy"] == pytest.approx(
        float(dense), rel=1e-5
    )
    assert table["bigram", "0", "kept"] == sum(int(t.sum()) for t in mask.values())
    assert math.isfinite(table["bigram", "0", "bigram_r"])
    layer_rows = [b for b in blocks if b["lambda"] == "0" and b["head"] is None]
    assert sum(b["size"] for b in layer_rows) == expected_masked(model_type)
    mlp_in = [b for b in layer_rows if b["layer"] == 0 and b["kind"] == "MLP-in"]
    assert sum(b["size"] for b in mlp_in) == 2 * D * FF
    head_rows = [b for b in blocks if b["lambda"] == "0" and b["head"] is not None]
    assert {b["head"] for b in head_rows} == set(range(HEADS))


def test_layout_dataclass_defaults_keep_old_layouts_valid() -> None:
    """A Layout built without kv_heads/head_dim (as older callers do) means one key/value head
    per head and head size d / h."""
    layout = Layout("gpt_neox", 1, 4, 16, 8, (), {})
    assert (layout.n_kv_heads, layout.head_size, layout.group_size) == (4, 4, 1)
