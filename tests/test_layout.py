"""The layout names the right weight entries, proven by what zeroing them does to a forward pass.

Nothing here re-derives the index formulas: each test zeroes the entries the layout assigns to a
head, a block or an MLP unit and checks the effect with hooks on the model's own modules. The
tests must fail for the authors' bug (GPT-NeoX fused QKV rows read as contiguous thirds).
"""

from __future__ import annotations

import copy
import dataclasses
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from bigram_subnetworks.errors import UserError
from bigram_subnetworks.models.layout import (
    BLOCK_KINDS,
    Block,
    Layout,
    arch_of,
    block_modules,
    body,
    final_norm,
    input_embedding,
    layout_of,
    unembedding,
)

VOCAB = 50
pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def ids() -> torch.Tensor:
    """A seeded batch of 2 sequences of 9 token ids."""
    return torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(7))


def out_proj(model: Any, layer: int) -> torch.nn.Module:
    """The attention output projection, whose input is the concatenation of the heads."""
    attn_block = block_modules(model)[layer]
    if arch_of(model) == "gpt_neox":
        return attn_block.attention.dense
    return attn_block.attn.c_proj


@contextmanager
def hooked(
    module: torch.nn.Module, pre: bool = False, edit: Callable[[torch.Tensor], None] | None = None
) -> Iterator[list[torch.Tensor]]:
    """Record a module's input (pre=True) or output on every call; `edit` may change it in place."""
    seen: list[torch.Tensor] = []

    def pre_hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if edit is not None:
            edit(args[0])
        seen.append(args[0].detach().clone())

    def hook(_module: torch.nn.Module, _args: Any, output: torch.Tensor) -> None:
        if edit is not None:
            edit(output)
        seen.append(output.detach().clone())

    handle = (
        module.register_forward_pre_hook(pre_hook) if pre else module.register_forward_hook(hook)
    )
    try:
        yield seen
    finally:
        handle.remove()


def heads_input(model: Any, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """The input of the layer's output projection, shaped (batch, seq, heads, head size)."""
    with torch.no_grad(), hooked(out_proj(model, layer), pre=True) as seen:
        model(ids)
    x = seen[0]
    return x.reshape(*x.shape[:-1], model.config.num_attention_heads, -1)


def attention_probs(model: Any, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """Attention probabilities of one layer, (batch, heads, query, key); eager attention."""
    with torch.no_grad():
        return model(ids, output_attentions=True).attentions[layer]


def output_features(layout: Layout, block: Block) -> torch.Tensor:
    """The block's indices along the weight's output axis (the axis the bias shares)."""
    index = block.rows if layout.arch == "gpt_neox" else block.cols
    assert index is not None, f"{block.kind} block is not split along output features"
    return index


def zero(model: Any, layout: Layout, blocks: list[Block], bias: bool = True) -> None:
    """Zero the blocks' weight entries and, with `bias`, their output features' bias entries."""
    with torch.no_grad():
        for block in blocks:
            model.get_parameter(block.param)[block.index()] = 0.0
            if bias and block.kind in ("Q", "K", "V", "MLP-in"):
                name = block.param.removesuffix("weight") + "bias"
                model.get_parameter(name)[output_features(layout, block)] = 0.0


def kind_of(layout: Layout, layer: int, head: int, kind: str) -> Block:
    return next(b for b in layout.head_blocks(layer, head) if b.kind == kind)


def assert_v_zeroes_exactly_head(model: Any, layout: Layout, ids: torch.Tensor) -> None:
    """Zeroing "V of head h" (+ bias) zeroes head h's output and leaves every other head alone."""
    for layer in range(layout.n_layers):
        before = heads_input(model, layer, ids)
        probs_before = attention_probs(model, layer, ids)
        for head in range(layout.n_heads):
            edited = copy.deepcopy(model)
            zero(edited, layout, [kind_of(layout, layer, head, "V")])
            after = heads_input(edited, layer, ids)
            assert torch.all(after[:, :, head] == 0), f"layer {layer} head {head} not zeroed"
            others = [h for h in range(layout.n_heads) if h != head]
            assert torch.equal(after[:, :, others], before[:, :, others])
            assert torch.equal(attention_probs(edited, layer, ids), probs_before)


# --- the fixture models -------------------------------------------------------------------------


def test_fixture_models_reload_exactly(
    tiny_built_models: dict[str, Any], tiny_loaded_models: dict[str, Any]
) -> None:
    """The models loaded back from their save_pretrained directories equal the seeded builds."""
    for kind, model in tiny_loaded_models.items():
        built = dict(tiny_built_models[kind].named_parameters())
        loaded = dict(model.named_parameters())
        assert loaded.keys() == built.keys()
        assert sum(p.numel() for p in loaded.values()) < 10_000
        for name, tensor in loaded.items():
            assert torch.equal(tensor, built[name]), name
        assert float(loaded[layout_of(model).masked[0]].detach().std()) > 0.3  # re-randomised


# --- shapes and tiling --------------------------------------------------------------------------


def test_layout_describes_model(tiny_model: Any) -> None:
    """Dimensions, masked names and shapes agree with the model's own parameters."""
    layout = layout_of(tiny_model)
    params = dict(tiny_model.named_parameters())
    d_ff = 40 if layout.arch == "gpt_neox" else 24
    assert (layout.n_layers, layout.n_heads, layout.d_model, layout.d_ff) == (2, 4, 16, d_ff)
    assert layout.head_size == 4
    assert len(layout.masked) == 4 * layout.n_layers
    for name in layout.masked:
        assert name.endswith(".weight") and name in params
        assert layout.shapes[name] == tuple(params[name].shape)
    assert layout.n_masked == sum(params[n].numel() for n in layout.masked)
    assert layout.n_masked == 2 * (4 * 16 * 16 + 2 * 16 * d_ff)
    # Everything else (embeddings, norms, biases, unembedding) is never masked.
    assert not any("embed" in n or "wte" in n or "wpe" in n or "norm" in n for n in layout.masked)
    assert layout.layer_params(1) == [n for n in layout.masked if ".1." in n]
    for kind in ("Q", "K", "V"):
        assert layout.param(0, kind) == layout.param(0, "QKV")


def test_blocks_tile_every_masked_entry_once(tiny_model: Any) -> None:
    """blocks() lists (layer, kind) in order, with the right sizes, covering each entry once."""
    layout = layout_of(tiny_model)
    blocks = layout.blocks()
    expected = [(layer, kind) for layer in range(layout.n_layers) for kind in BLOCK_KINDS]
    assert [(b.layer, b.kind) for b in blocks] == expected
    d, d_ff = layout.d_model, layout.d_ff
    sizes = {
        "Q": d * d,
        "K": d * d,
        "V": d * d,
        "O": d * d,
        "MLP-in": d * d_ff,
        "MLP-out": d * d_ff,
    }
    seen = {name: torch.zeros(shape, dtype=torch.bool) for name, shape in layout.shapes.items()}
    for block in blocks:
        assert block.size == sizes[block.kind]
        assert block.select(seen[block.param]).numel() == block.size
        assert block.shape == layout.shapes[block.param]
        assert not seen[block.param][block.index()].any(), f"{block.kind} overlaps"
        seen[block.param][block.index()] = True
    assert sum(b.size for b in blocks) == layout.n_masked
    assert all(t.all() for t in seen.values())


def test_head_and_unit_blocks_tile_their_kinds(tiny_model: Any) -> None:
    """Per-head Q/K/V/O blocks partition the layer's Q/K/V/O blocks; MLP units partition MLPs."""
    layout = layout_of(tiny_model)
    for layer in range(layout.n_layers):
        whole = {b.kind: b for b in layout.blocks() if b.layer == layer}
        for kind in ("Q", "K", "V", "O"):
            count = torch.zeros(layout.shapes[whole[kind].param], dtype=torch.int64)
            for head in range(layout.n_heads):
                block = kind_of(layout, layer, head, kind)
                assert block.size == whole[kind].size // layout.n_heads
                count[block.index()] += 1
            inside = torch.zeros_like(count, dtype=torch.bool)
            inside[whole[kind].index()] = True
            assert torch.equal(count, inside.long()), kind
        halves = [range(0, 5), range(5, layout.d_ff)]
        for kind_index, kind in enumerate(("MLP-in", "MLP-out")):
            count = torch.zeros(layout.shapes[whole[kind].param], dtype=torch.int64)
            for units in halves:
                count[layout.mlp_unit_blocks(layer, units)[kind_index].index()] += 1
            assert torch.equal(count, torch.ones_like(count)), kind


def test_block_index_with_rows_and_cols() -> None:
    """A block with both rows and cols selects their sub-grid."""
    block = Block(0, "Q", "w", torch.tensor([0, 2]), torch.tensor([1, 3]), (4, 4))
    grid = torch.arange(16).reshape(4, 4)
    assert torch.equal(block.select(grid), torch.tensor([[1, 3], [9, 11]]))
    assert block.size == 4
    assert Block(0, "O", "w", None, torch.tensor([1]), (4, 4)).size == 4


# --- behaviour: attention heads -----------------------------------------------------------------


def test_v_of_head_zeroes_exactly_that_head(tiny_model: Any, ids: torch.Tensor) -> None:
    """Zeroing the entries the layout calls "V of head h" silences head h and nothing else."""
    assert_v_zeroes_exactly_head(tiny_model, layout_of(tiny_model), ids)


def test_contiguous_thirds_bug_is_caught(tiny_neox: Any, ids: torch.Tensor) -> None:
    """The authors' reading of GPT-NeoX QKV rows as [Q | K | V] thirds fails the V check."""

    class ThirdsLayout(Layout):
        def _head_features(self, kind: str, heads: Any) -> torch.Tensor:
            if kind == "O":
                return super()._head_features(kind, heads)
            hs = self.head_size
            starts = ["QKV".index(kind) * self.d_model + h * hs for h in heads]
            return torch.cat([torch.arange(s, s + hs) for s in starts])

    layout = layout_of(tiny_neox)
    buggy = ThirdsLayout(**{f.name: getattr(layout, f.name) for f in dataclasses.fields(layout)})
    with pytest.raises(AssertionError):
        assert_v_zeroes_exactly_head(tiny_neox, buggy, ids)


@pytest.mark.parametrize("kind", ["Q", "K"])
def test_q_or_k_of_head_changes_only_that_head(
    tiny_model: Any, ids: torch.Tensor, kind: str
) -> None:
    """Zeroing Q (or K) of head h + bias makes h attend uniformly; other heads are unchanged."""
    layout = layout_of(tiny_model)
    causal = torch.tril(torch.ones(ids.shape[1], ids.shape[1]))
    uniform = causal / causal.sum(-1, keepdim=True)
    for layer in range(layout.n_layers):
        before = heads_input(tiny_model, layer, ids)
        probs_before = attention_probs(tiny_model, layer, ids)
        for head in range(layout.n_heads):
            edited = copy.deepcopy(tiny_model)
            zero(edited, layout, [kind_of(layout, layer, head, kind)])
            after = heads_input(edited, layer, ids)
            others = [h for h in range(layout.n_heads) if h != head]
            assert torch.equal(after[:, :, others], before[:, :, others])
            assert not torch.allclose(after[:, :, head], before[:, :, head], atol=1e-4)
            probs = attention_probs(edited, layer, ids)
            torch.testing.assert_close(probs[:, head], uniform.expand_as(probs[:, head]))
            assert torch.equal(probs[:, others], probs_before[:, others])


@pytest.mark.parametrize("arch", ["gpt_neox_norope", "gpt2"])
def test_q_and_k_are_not_swapped(
    arch: str, tiny_loaded_models: dict[str, Any], ids: torch.Tensor
) -> None:
    """Without rotary embeddings, a constant key (K weights zeroed, bias kept) gives uniform
    attention, while a constant query (Q weights zeroed, bias kept) does not."""
    model = tiny_loaded_models[arch]
    layout = layout_of(model)
    causal = torch.tril(torch.ones(ids.shape[1], ids.shape[1]))
    uniform = causal / causal.sum(-1, keepdim=True)
    for layer in range(layout.n_layers):
        for head in range(layout.n_heads):
            probs = {}
            for kind in ("Q", "K"):
                edited = copy.deepcopy(model)
                zero(edited, layout, [kind_of(layout, layer, head, kind)], bias=False)
                probs[kind] = attention_probs(edited, layer, ids)[:, head]
            torch.testing.assert_close(probs["K"], uniform.expand_as(probs["K"]))
            assert (probs["Q"] - uniform).abs().max() > 1e-3


def test_o_of_head_drops_that_heads_input(tiny_model: Any, ids: torch.Tensor) -> None:
    """Zeroing "O of head h" equals zeroing head h's slice of the output projection's input."""
    layout = layout_of(tiny_model)
    hs = layout.head_size
    for layer in range(layout.n_layers):
        for head in range(layout.n_heads):

            def drop_head(x: torch.Tensor, head: int = head) -> None:
                x[..., head * hs : (head + 1) * hs] = 0.0

            proj = out_proj(tiny_model, layer)
            with torch.no_grad(), hooked(proj, pre=True, edit=drop_head), hooked(proj) as reference:
                tiny_model(ids)
            edited = copy.deepcopy(tiny_model)
            zero(edited, layout, [kind_of(layout, layer, head, "O")])
            with torch.no_grad(), hooked(out_proj(edited, layer)) as result:
                edited(ids)
            torch.testing.assert_close(result[0], reference[0], rtol=0, atol=1e-5)


# --- behaviour: MLP units -----------------------------------------------------------------------


def mlp_of(model: Any, layer: int) -> torch.nn.Module:
    return block_modules(model)[layer].mlp


@pytest.mark.parametrize("units", [[3], [0, 7, 11, 23]])
def test_mlp_in_of_units_makes_them_constant(
    tiny_model: Any, ids: torch.Tensor, units: list[int]
) -> None:
    """Zeroing MLP-in of units U (+ bias) pins their activations to act(0); others unchanged."""
    layout = layout_of(tiny_model)
    others = [u for u in range(layout.d_ff) if u not in units]
    for layer in range(layout.n_layers):
        act = mlp_of(tiny_model, layer).act
        with torch.no_grad(), hooked(act) as before:
            tiny_model(ids)
        edited = copy.deepcopy(tiny_model)
        in_block = layout.mlp_unit_blocks(layer, units)[0]
        assert in_block.kind == "MLP-in" and in_block.size == len(units) * layout.d_model
        zero(edited, layout, [in_block])
        with torch.no_grad(), hooked(mlp_of(edited, layer).act) as after:
            edited(ids)
        act_zero = act(torch.zeros(()))
        assert torch.all(after[0][..., units] == act_zero)
        assert torch.equal(after[0][..., others], before[0][..., others])
        assert before[0][..., units].std() > 0.01  # the units were alive before


def test_mlp_out_of_units_removes_their_contribution(tiny_model: Any, ids: torch.Tensor) -> None:
    """Zeroing MLP-out of units U equals zeroing those units' activations."""
    layout = layout_of(tiny_model)
    units = [1, 2, 9, 20]
    for layer in range(layout.n_layers):

        def drop_units(x: torch.Tensor) -> None:
            x[..., units] = 0.0

        mlp = mlp_of(tiny_model, layer)
        with torch.no_grad(), hooked(mlp.act, edit=drop_units), hooked(mlp) as reference:
            tiny_model(ids)
        with torch.no_grad(), hooked(mlp) as full:
            tiny_model(ids)
        edited = copy.deepcopy(tiny_model)
        out_block = layout.mlp_unit_blocks(layer, units)[1]
        assert out_block.kind == "MLP-out" and out_block.size == len(units) * layout.d_model
        zero(edited, layout, [out_block])
        with torch.no_grad(), hooked(mlp_of(edited, layer)) as result:
            edited(ids)
        torch.testing.assert_close(result[0], reference[0], rtol=0, atol=1e-5)
        assert not torch.allclose(full[0], reference[0], atol=1e-3)


# --- errors and accessors -----------------------------------------------------------------------


def test_out_of_range_requests_are_user_errors(tiny_model: Any) -> None:
    """Bad layer, head or unit numbers give one-line UserErrors naming the valid range."""
    layout = layout_of(tiny_model)
    calls: list[Callable[[], object]] = [
        lambda: layout.head_blocks(0, 4),
        lambda: layout.head_blocks(0, -1),
        lambda: layout.head_blocks(2, 0),
        lambda: layout.mlp_unit_blocks(0, [0, layout.d_ff]),
        lambda: layout.mlp_unit_blocks(0, [-1]),
        lambda: layout.mlp_unit_blocks(-1, [0]),
        lambda: layout.param(5, "O"),
        lambda: layout.layer_params(2),
    ]
    for call in calls:
        with pytest.raises(UserError, match="out of range") as info:
            call()
        assert "\n" not in str(info.value)
    assert [b.size for b in layout.mlp_unit_blocks(0, [])] == [0, 0]


def test_unsupported_or_mismatched_models_are_refused(tiny_gpt2: Any) -> None:
    """Other model types, a headless GPT-2 and a wrongly shaped weight give UserErrors."""
    from transformers import GPT2Model

    with pytest.raises(UserError, match="not supported"):
        arch_of(torch.nn.Linear(2, 2))
    other = torch.nn.Module()
    other.config = types.SimpleNamespace(model_type="mamba")  # type: ignore[assignment]
    with pytest.raises(UserError, match="'mamba': not supported"):
        layout_of(other)
    with pytest.raises(UserError, match="load the model as GPT2LMHeadModel"):
        layout_of(GPT2Model(tiny_gpt2.config))
    tiny_gpt2.transformer.h[1].mlp.c_proj.weight = torch.nn.Parameter(torch.zeros(24, 17))
    with pytest.raises(UserError, match=r"transformer\.h\.1\.mlp\.c_proj\.weight: expected"):
        layout_of(tiny_gpt2)


def test_accessors_and_final_norm_input(tiny_model: Any, ids: torch.Tensor) -> None:
    """body/block_modules/embeddings point at the model's modules; logits = W_U · norm(input of
    final_norm), and HF's last hidden state is already normed (so hook the norm's input)."""
    layout = layout_of(tiny_model)
    assert len(block_modules(tiny_model)) == layout.n_layers
    assert body(tiny_model) is tiny_model.base_model
    assert unembedding(tiny_model).shape == (VOCAB, layout.d_model)
    assert input_embedding(tiny_model).shape == (VOCAB, layout.d_model)
    norm = final_norm(tiny_model)
    assert isinstance(norm, torch.nn.LayerNorm)
    with torch.no_grad(), hooked(norm, pre=True) as pre:
        out = tiny_model(ids, output_hidden_states=True)
    residual = pre[0]
    with torch.no_grad():
        normed = norm(residual)
    torch.testing.assert_close(out.hidden_states[-1], normed)
    assert not torch.allclose(out.hidden_states[-1], residual, atol=1e-3)
    torch.testing.assert_close(out.logits, normed @ unembedding(tiny_model).T)
