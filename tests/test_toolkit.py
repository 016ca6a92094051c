"""Mask toolkit: algebra, random baselines, head/unit/layer edits, counts, files, use in a model."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bigram_subnetworks.errors import UserError
from bigram_subnetworks.masks.toolkit import (
    Mask,
    apply_mask,
    block_counts,
    check_mask,
    complement,
    generate,
    head_counts,
    intersection,
    keep_all,
    keep_none,
    kept,
    load_mask,
    masked,
    random_like,
    random_within_blocks,
    save_mask,
    set_head,
    set_layer,
    set_mlp_units,
    total,
    union,
)
from bigram_subnetworks.models.layout import Layout, arch_of, block_modules, layout_of
from tiny_models import tiny_lm

pytestmark = pytest.mark.usefixtures("torch_single_thread")
VOCAB = 50


def random_mask(layout: Layout, seed: int, p: float = 0.4) -> Mask:
    """Each entry kept with probability p, seeded."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(layout.shapes[n], generator=gen) < p for n in layout.masked}


def same(a: Mask, b: Mask) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def snapshot(mask: Mask) -> Mask:
    return {n: t.clone() for n, t in mask.items()}


def bits(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter as raw int32 bits (tells -0.0 from 0.0)."""
    return {n: p.detach().clone().view(torch.int32) for n, p in model.named_parameters()}


def one_line_user_error(call: Any, match: str) -> str:
    with pytest.raises(UserError, match=match) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(params=["gpt_neox", "gpt2"])
def layout(request: pytest.FixtureRequest, tiny_loaded_models: dict[str, Any]) -> Layout:
    return layout_of(tiny_loaded_models[request.param])


@pytest.fixture
def other_layouts(tiny_loaded_models: dict[str, Any]) -> dict[str, Layout]:
    return {kind: layout_of(model) for kind, model in tiny_loaded_models.items()}


# --- basics and algebra -------------------------------------------------------------------------


def test_keep_all_and_none(layout: Layout) -> None:
    full, empty = keep_all(layout), keep_none(layout)
    assert list(full) == list(layout.masked)
    assert all(t.dtype == torch.bool for t in (*full.values(), *empty.values()))
    assert kept(full) == total(full) == total(empty) == layout.n_masked
    assert kept(empty) == 0
    check_mask(full, layout, "test")


def test_set_algebra(layout: Layout) -> None:
    """Complement, union and intersection obey Boolean algebra and never modify their inputs."""
    a, b = random_mask(layout, 1), random_mask(layout, 2, p=0.7)
    a0, b0 = snapshot(a), snapshot(b)
    assert same(complement(complement(a)), a)
    assert kept(complement(a)) == total(a) - kept(a)
    assert same(union(a, complement(a)), keep_all(layout))
    assert same(intersection(a, complement(a)), keep_none(layout))
    assert same(complement(union(a, b)), intersection(complement(a), complement(b)))
    assert same(complement(intersection(a, b)), union(complement(a), complement(b)))
    assert same(union(a, b), union(b, a)) and same(intersection(a, b), intersection(b, a))
    assert same(union(a, a), a) and same(intersection(a, a), a)
    assert kept(union(a, b)) + kept(intersection(a, b)) == kept(a) + kept(b)
    assert 0 < kept(intersection(a, b)) < kept(a) < kept(union(a, b))
    assert same(a, a0) and same(b, b0)


def test_combining_masks_of_different_models_is_refused(
    other_layouts: dict[str, Layout],
) -> None:
    neox, gpt2 = other_layouts["gpt_neox"], other_layouts["gpt2"]
    a = keep_all(neox)
    fewer = dict(a)
    fewer.pop(neox.masked[0])
    for b in (keep_all(gpt2), fewer):
        one_line_user_error(lambda b=b: union(a, b), "different parameters")
        one_line_user_error(lambda b=b: intersection(a, b), "different parameters")
    reshaped = dict(a)
    reshaped[neox.masked[0]] = torch.ones(3, 3, dtype=torch.bool)
    one_line_user_error(lambda: union(a, reshaped), "different parameters")


# --- random baselines ---------------------------------------------------------------------------


def test_random_like_keeps_matrix_counts(layout: Layout) -> None:
    """Same count in every matrix; seeded; independent of the dict's order; input untouched."""
    mask = random_mask(layout, 3, p=0.2)
    before = snapshot(mask)
    first = random_like(mask, seed=5)
    assert list(first) == list(mask)
    for name in mask:
        assert first[name].dtype == torch.bool and first[name].shape == mask[name].shape
        assert int(first[name].sum()) == int(mask[name].sum())
    assert same(random_like(mask, seed=5), first)
    assert not same(random_like(mask, seed=6), first)
    assert not same(first, mask)
    reordered = {n: mask[n] for n in reversed(list(mask))}
    assert all(torch.equal(random_like(reordered, seed=5)[n], first[n]) for n in mask)
    assert same(mask, before)


def test_random_like_is_uniform_within_a_matrix() -> None:
    """Positions are uniform: each entry of a 4×5 matrix with 5 kept is kept 1/4 of the time."""
    mask = {"w": torch.zeros(4, 5, dtype=torch.bool)}
    mask["w"][0] = True  # all kept entries in the first row
    freq = torch.stack([random_like(mask, seed=s)["w"] for s in range(400)]).float().mean(0)
    assert (freq - 0.25).abs().max() < 0.1


def test_random_within_blocks_keeps_block_counts(layout: Layout) -> None:
    """Same count in every (layer, kind) block; entries stay inside their block; seeded."""
    q0 = next(b for b in layout.blocks() if b.kind == "Q" and b.layer == 0)
    mask = random_mask(layout, 4, p=0.3)
    mask[q0.param] = torch.zeros_like(mask[q0.param])  # the fused QKV: half of Q only
    mask[q0.param][q0.index()] = torch.rand(q0.select(mask[q0.param]).shape) < 0.5
    before = snapshot(mask)
    drawn = random_within_blocks(mask, layout, seed=9)
    assert block_counts(drawn, layout) == block_counts(mask, layout)
    assert all(int(drawn[n].sum()) == int(mask[n].sum()) for n in mask)
    assert all(drawn[n].dtype == torch.bool for n in drawn)
    outside_q = drawn[q0.param].clone()
    outside_q[q0.index()] = False
    assert not outside_q.any()
    assert not same(drawn, mask)
    assert same(random_within_blocks(mask, layout, seed=9), drawn)
    assert not same(random_within_blocks(mask, layout, seed=10), drawn)
    assert same(mask, before)
    # A per-matrix shuffle does not keep the block counts of the fused QKV matrix.
    spread = {
        (r["layer"], r["kind"]): r["kept"] for r in block_counts(random_like(mask, 9), layout)
    }
    assert spread[(0, "K")] > 0


def test_random_within_blocks_is_uniform_within_a_block(layout: Layout) -> None:
    """Kept entries of a block land on each of its entries equally often."""
    q0 = next(b for b in layout.blocks() if b.kind == "Q" and b.layer == 0)
    mask = keep_none(layout)
    mask[q0.param] = mask[q0.param].clone()
    mask[q0.param][0, :] = True  # d_model (GPT-NeoX) or 3·d_model (GPT-2) entries, some in Q
    k = int(q0.select(mask[q0.param]).sum())
    draws = [random_within_blocks(mask, layout, seed=s)[q0.param] for s in range(150)]
    freq = q0.select(torch.stack(draws).float().mean(0))
    assert 0 < k < q0.size
    assert (freq - k / q0.size).abs().max() < 0.15


def test_random_within_blocks_refuses_foreign_mask(other_layouts: dict[str, Layout]) -> None:
    mask = keep_all(other_layouts["gpt2"])
    one_line_user_error(
        lambda: random_within_blocks(mask, other_layouts["gpt_neox"], seed=0), "another model"
    )


# --- edits and counts ---------------------------------------------------------------------------


def test_set_head_counts(layout: Layout) -> None:
    """set_head keeps (or drops) exactly the Q, K, V and O entries of one head."""
    d, hs = layout.d_model, layout.head_size
    one = set_head(keep_none(layout), layout, 1, 2, keep=True)
    assert kept(one) == 4 * d * hs
    for row in head_counts(one, layout):
        assert row["size"] == d * hs
        assert row["kept"] == (row["size"] if (row["layer"], row["head"]) == (1, 2) else 0)
    for row in block_counts(one, layout):
        expected = row["size"] // layout.n_heads if row["layer"] == 1 else 0
        assert row["kept"] == (expected if row["kind"] in "QKVO" else 0)
    dropped = set_head(keep_all(layout), layout, 1, 2, keep=False)
    assert same(dropped, complement(one))
    assert same(set_head(dropped, layout, 1, 2, keep=True), keep_all(layout))


def test_set_head_removes_that_head(tiny_model: Any) -> None:
    """With head h's weights dropped, its value is the constant V bias and its output unused."""
    layout = layout_of(tiny_model)
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    layer, head, hs = 1, 3, layout.head_size
    attn = block_modules(tiny_model)[layer]
    proj = attn.attention.dense if arch_of(tiny_model) == "gpt_neox" else attn.attn.c_proj
    seen: list[torch.Tensor] = []

    def record(_module: Any, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0].detach().clone())

    def drop(_module: Any, args: tuple[torch.Tensor, ...]) -> None:
        args[0][..., head * hs : (head + 1) * hs] = 0.0

    outputs: list[torch.Tensor] = []
    handle = proj.register_forward_pre_hook(record)
    out_handle = proj.register_forward_hook(lambda _m, _a, out: outputs.append(out.detach()))
    mask = set_head(keep_all(layout), layout, layer, head, keep=False)
    with torch.no_grad():
        tiny_model(ids)
        drop_handle = proj.register_forward_pre_hook(drop)
        tiny_model(ids)  # reference: the intact model with head h's output zeroed
        drop_handle.remove()
        with masked(tiny_model, mask):
            tiny_model(ids)
    handle.remove()
    out_handle.remove()
    full, edited = (x.reshape(*x.shape[:-1], layout.n_heads, hs) for x in (seen[0], seen[2]))
    others = [h for h in range(layout.n_heads) if h != head]
    assert torch.equal(edited[:, :, others], full[:, :, others])
    constant = edited[:, :, head]
    assert torch.allclose(constant, constant[0, 0].expand_as(constant), atol=1e-6)
    assert not torch.allclose(full[:, :, head], full[0, 0, head].expand_as(constant), atol=1e-3)
    torch.testing.assert_close(outputs[2], outputs[1], rtol=0, atol=1e-5)


def test_set_mlp_units(tiny_model: Any) -> None:
    """Dropped units' activations become act(bias) at every position; other units unchanged."""
    layout = layout_of(tiny_model)
    units, layer, d = [2, 5, 17], 0, layout.d_model
    mask = set_mlp_units(keep_all(layout), layout, layer, units, keep=False)
    counts = {(r["layer"], r["kind"]): r for r in block_counts(mask, layout)}
    for kind in ("MLP-in", "MLP-out"):
        assert counts[(layer, kind)]["kept"] == counts[(layer, kind)]["size"] - len(units) * d
    assert kept(mask) == layout.n_masked - 2 * len(units) * d
    assert same(set_mlp_units(mask, layout, layer, units, keep=True), keep_all(layout))
    assert same(set_mlp_units(mask, layout, layer, [], keep=True), mask)
    one_line_user_error(lambda: set_mlp_units(mask, layout, 0, [layout.d_ff], True), "range")

    mlp = block_modules(tiny_model)[layer].mlp
    fc = mlp.dense_h_to_4h if arch_of(tiny_model) == "gpt_neox" else mlp.c_fc
    acts: list[torch.Tensor] = []
    handle = mlp.act.register_forward_hook(lambda _m, _a, out: acts.append(out.detach().clone()))
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tiny_model(ids)
        with masked(tiny_model, mask):
            tiny_model(ids)
        pinned = mlp.act(fc.bias[units])
    handle.remove()
    others = [u for u in range(layout.d_ff) if u not in units]
    assert torch.equal(acts[1][..., others], acts[0][..., others])
    torch.testing.assert_close(acts[1][..., units], pinned.expand_as(acts[1][..., units]))


def test_set_layer(layout: Layout) -> None:
    """set_layer fills every masked matrix of one layer and leaves the others alone."""
    dropped = set_layer(keep_all(layout), layout, 1, keep=False)
    for name in layout.masked:
        keep = name not in layout.layer_params(1)
        assert torch.equal(dropped[name], torch.full(layout.shapes[name], keep))
    partial = random_mask(layout, 6)
    restored = set_layer(partial, layout, 0, keep=True)
    assert all(restored[n].all() for n in layout.layer_params(0))
    assert all(torch.equal(restored[n], partial[n]) for n in layout.layer_params(1))
    assert not all(partial[n].all() for n in layout.layer_params(0))  # the input is unchanged
    one_line_user_error(lambda: set_layer(partial, layout, 2, keep=True), "out of range")


def test_block_and_head_counts_agree(layout: Layout) -> None:
    """Per-head counts add up to the per-block counts; per-block counts add up to the total."""
    mask = random_mask(layout, 7)
    blocks = block_counts(mask, layout)
    assert sum(r["kept"] for r in blocks) == kept(mask)
    assert sum(r["size"] for r in blocks) == layout.n_masked
    assert [r["kept"] for r in block_counts(keep_all(layout), layout)] == [
        r["size"] for r in blocks
    ]
    heads = head_counts(mask, layout)
    assert len(heads) == layout.n_layers * layout.n_heads * 4
    for row in blocks:
        if row["kind"] in "QKVO":
            parts = [h for h in heads if (h["layer"], h["kind"]) == (row["layer"], row["kind"])]
            assert sum(h["kept"] for h in parts) == row["kept"]
            assert sum(h["size"] for h in parts) == row["size"]


# --- files --------------------------------------------------------------------------------------


def test_save_load_round_trip(layout: Layout, tmp_path: Path) -> None:
    """Tensors and metadata survive; kept/total/fingerprint are recomputed, never trusted."""
    mask = random_mask(layout, 8)
    metadata = {"lambda": 1e-3, "seed": 4, "notes": ["a", {"b": None}], "kept": 999}
    path = tmp_path / "sub" / "mask.safetensors"
    save_mask(path, mask, metadata)
    loaded, meta = load_mask(path, layout)
    assert same(loaded, mask)
    assert meta["lambda"] == 1e-3 and meta["seed"] == 4 and meta["notes"] == ["a", {"b": None}]
    assert (meta["kept"], meta["total"]) == (kept(mask), layout.n_masked)
    assert isinstance(meta["params_sha256"], str) and len(meta["params_sha256"]) == 64
    assert meta["bsn_mask_format"] == 2  # bit-packed (tests/test_mask_files.py: the format)
    assert list(tmp_path.rglob("*")) == [path.parent, path]  # no temporary files left


def test_equal_masks_give_identical_files(layout: Layout, tmp_path: Path) -> None:
    """Saving is deterministic: equal masks and metadata give byte-identical files."""
    mask = random_mask(layout, 9)
    metadata = {f"key{i}": i for i in range(10)}
    digests = set()
    for i in range(4):
        save_mask(tmp_path / f"{i}.safetensors", mask, metadata)
        digests.add(hashlib.sha256((tmp_path / f"{i}.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
    loaded, meta = load_mask(tmp_path / "0.safetensors", layout)
    assert same(loaded, mask) and meta["key7"] == 7


def test_views_of_one_buffer_can_be_saved(layout: Layout, tmp_path: Path) -> None:
    """Masks cut from one flat tensor (views sharing storage) save and load correctly."""
    flat = torch.rand(layout.n_masked, generator=torch.Generator().manual_seed(0)) < 0.5
    mask, start = {}, 0
    for name in layout.masked:
        size = int(torch.Size(layout.shapes[name]).numel())
        mask[name] = flat[start : start + size].view(layout.shapes[name])
        start += size
    save_mask(tmp_path / "views.safetensors", mask, {})
    assert same(load_mask(tmp_path / "views.safetensors", layout)[0], mask)


def test_damaged_files_are_refused(layout: Layout, tmp_path: Path) -> None:
    """Missing, truncated, extended, bit-flipped or header-damaged files give one-line errors."""
    path = tmp_path / "mask.safetensors"
    save_mask(path, random_mask(layout, 10), {"seed": 1})
    raw = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    one_line_user_error(lambda: load_mask(bad), "not found")
    for cut in (0, 5, 8, 40, len(raw) // 2, len(raw) - 1):
        bad.write_bytes(raw[:cut])
        one_line_user_error(lambda: load_mask(bad), "not a readable safetensors file")
    bad.write_bytes(raw + b"\x00")
    one_line_user_error(lambda: load_mask(bad), "not a readable safetensors file")
    header_end = 8 + int.from_bytes(raw[:8], "little")
    flipped = bytearray(raw)
    flipped[header_end + 3] ^= 1  # a kept entry dropped or a dropped entry kept
    bad.write_bytes(bytes(flipped))
    one_line_user_error(lambda: load_mask(bad), "disagree with its metadata")
    damaged = bytearray(raw)
    damaged[12:20] = b"#" * 8
    bad.write_bytes(bytes(damaged))
    one_line_user_error(lambda: load_mask(bad), "not a readable safetensors file")
    bad.write_bytes(b"not a safetensors file at all" * 4)
    one_line_user_error(lambda: load_mask(bad), "not a readable safetensors file")


def test_foreign_files_are_refused(layout: Layout, tmp_path: Path) -> None:
    """Files not written by save_mask, or holding non-bool tensors, are refused."""
    mask = random_mask(layout, 11)
    path = tmp_path / "plain.safetensors"
    save_file(mask, path)
    one_line_user_error(lambda: load_mask(path), "no kept/total/params_sha256 metadata")
    save_file(mask, path, metadata={"kept": "many"})
    one_line_user_error(lambda: load_mask(path), "metadata is not JSON")
    as_float = {n: t.float() for n, t in mask.items()}
    reserved = {"kept": str(kept(mask)), "total": str(total(mask)), "params_sha256": '"x"'}
    save_file(as_float, path, metadata=reserved)
    one_line_user_error(lambda: load_mask(path), "bool")
    one_line_user_error(lambda: save_mask(tmp_path / "f.safetensors", as_float, {}), "bool")
    assert not (tmp_path / "f.safetensors").exists()
    one_line_user_error(lambda: check_mask(as_float, layout, "m"), "masks must be bool")


def test_masks_of_another_model_are_refused(
    other_layouts: dict[str, Layout], tmp_path: Path
) -> None:
    """Loading with a layout refuses another architecture's names or another width's shapes."""
    neox, gpt2 = other_layouts["gpt_neox"], other_layouts["gpt2"]
    save_mask(tmp_path / "gpt2.safetensors", keep_all(gpt2), {})
    message = one_line_user_error(
        lambda: load_mask(tmp_path / "gpt2.safetensors", neox), "mask from another model"
    )
    assert "gpt2.safetensors" in message
    wider = {n: torch.ones(s[0], s[1] + 1, dtype=torch.bool) for n, s in neox.shapes.items()}
    save_mask(tmp_path / "wide.safetensors", wider, {})
    one_line_user_error(lambda: load_mask(tmp_path / "wide.safetensors", neox), "has shape")
    fewer = keep_all(neox)
    fewer.pop(neox.masked[-1])
    save_mask(tmp_path / "fewer.safetensors", fewer, {})
    one_line_user_error(lambda: load_mask(tmp_path / "fewer.safetensors", neox), "missing")
    assert load_mask(tmp_path / "gpt2.safetensors")[1]["total"] == gpt2.n_masked


def test_masks_trained_on_other_weights_of_the_same_shape_are_refused(
    other_layouts: dict[str, Layout], tmp_path: Path
) -> None:
    """Same architecture and shapes but other weights (another seed or checkpoint): refused by
    the weights identity every trained mask carries."""
    neox = other_layouts["gpt_neox"]
    path = tmp_path / "m.safetensors"
    save_mask(path, keep_all(neox), {"model": "m", "weights_sha256": "a" * 64})
    message = one_line_user_error(
        lambda: load_mask(path, neox, {"model": "m", "weights_sha256": "b" * 64}), "other weights"
    )
    assert "retrain the mask on this model" in message and "m.safetensors" in message
    assert load_mask(path, neox, {"weights_sha256": "a" * 64})[1]["weights_sha256"] == "a" * 64
    hub = tmp_path / "hub.safetensors"
    save_mask(hub, keep_all(neox), {"id": "EleutherAI/pythia-70m", "commit": "1" * 40})
    other_commit = {"commit": "2" * 40}
    one_line_user_error(lambda: load_mask(hub, neox, other_commit), "model's is 222222222222")


# --- applying masks -----------------------------------------------------------------------------


def test_apply_mask_zeroes_exactly_the_dropped_entries(tiny_model: Any) -> None:
    layout = layout_of(tiny_model)
    mask = random_mask(layout, 12)
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    apply_mask(tiny_model, mask)
    for name, param in tiny_model.named_parameters():
        if name in mask:
            assert torch.all(param[~mask[name]] == 0)
            assert torch.equal(param[mask[name]], before[name][mask[name]])
        else:  # biases, norms, embeddings, unembedding
            assert torch.equal(param, before[name]), name


def test_foreign_masks_leave_the_model_untouched(
    tiny_model: Any, other_layouts: dict[str, Layout]
) -> None:
    """apply_mask and masked refuse another model's mask before changing any weight."""
    other = "gpt2" if arch_of(tiny_model) == "gpt_neox" else "gpt_neox"
    foreign = keep_none(other_layouts[other])
    before = bits(tiny_model)
    one_line_user_error(lambda: apply_mask(tiny_model, foreign), "another model")

    def enter() -> None:
        with masked(tiny_model, foreign):
            pytest.fail("the body ran with a foreign mask")

    one_line_user_error(enter, "another model")
    assert all(torch.equal(t, before[n]) for n, t in bits(tiny_model).items())


def test_masked_restores_weights_bit_exactly(tiny_model: Any) -> None:
    """Inside: the masked model; after (even when the body raises or edits weights): bit-exact."""
    layout = layout_of(tiny_model)
    mask = random_mask(layout, 13)
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    reference = copy.deepcopy(tiny_model)
    apply_mask(reference, mask)
    before = bits(tiny_model)
    with torch.no_grad():
        full = tiny_model(ids).logits
        with masked(tiny_model, mask) as inside:
            assert inside is tiny_model
            assert torch.equal(tiny_model(ids).logits, reference(ids).logits)
        assert torch.equal(tiny_model(ids).logits, full)
    assert all(torch.equal(t, before[n]) for n, t in bits(tiny_model).items())
    with pytest.raises(RuntimeError, match="boom"), masked(tiny_model, mask):
        with torch.no_grad():
            tiny_model.get_parameter(layout.masked[0]).add_(1.0)
        raise RuntimeError("boom")
    assert all(torch.equal(t, before[n]) for n, t in bits(tiny_model).items())


# --- generation ---------------------------------------------------------------------------------


def reference_generate(
    model: Any, ids: torch.Tensor, n: int, temperature: float, seed: int
) -> torch.Tensor:
    """Recompute the whole sequence every step (no cache), same sampling rule and generator."""
    gen = torch.Generator().manual_seed(seed)
    seq = ids
    with torch.no_grad():
        for _ in range(n):
            logits = model(seq).logits[:, -1].float()
            if temperature == 0:
                step = logits.argmax(-1, keepdim=True)
            else:
                step = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen)
            seq = torch.cat([seq, step], dim=1)
    return seq[:, ids.shape[1] :]


def test_greedy_generation(tiny_model: Any) -> None:
    """Greedy: deterministic, equal to a cache-free recomputation; 1-D prompts give 1-D ids."""
    prompt = torch.randint(0, VOCAB, (3, 4), generator=torch.Generator().manual_seed(3))
    new = generate(tiny_model, prompt, 12)
    assert new.shape == (3, 12) and new.dtype == torch.long
    assert torch.equal(generate(tiny_model, prompt, 12), new)
    assert torch.equal(new, reference_generate(tiny_model, prompt, 12, 0.0, 0))
    assert torch.equal(generate(tiny_model, prompt[1], 12), new[1])
    assert generate(tiny_model, prompt, 0).shape == (3, 0)
    assert generate(tiny_model, prompt[0], 0).shape == (0,)


def test_sampled_generation_is_seeded(tiny_model: Any) -> None:
    """Sampling: the same seed repeats, another seed differs; matches the cache-free reference."""
    prompt = torch.randint(0, VOCAB, (2, 3), generator=torch.Generator().manual_seed(4))
    first = generate(tiny_model, prompt, 15, temperature=1.5, seed=7)
    assert torch.equal(generate(tiny_model, prompt, 15, temperature=1.5, seed=7), first)
    assert not torch.equal(generate(tiny_model, prompt, 15, temperature=1.5, seed=8), first)
    assert torch.equal(first, reference_generate(tiny_model, prompt, 15, 1.5, 7))
    assert not torch.equal(first, generate(tiny_model, prompt, 15))


def test_generation_arguments_are_checked(tiny_gpt2: Any) -> None:
    prompt = torch.tensor([1, 2, 3])
    one_line_user_error(lambda: generate(tiny_gpt2, prompt, 3, temperature=-1.0), "temperature")
    one_line_user_error(lambda: generate(tiny_gpt2, prompt, -1), "max_new_tokens")


def test_metadata_values_are_json_strings(tmp_path: Path, layout: Layout) -> None:
    """Each metadata value is stored as its own JSON string, as other readers of the file expect."""
    save_mask(tmp_path / "m.safetensors", keep_none(layout), {"target": "bigram"})
    with safe_open(tmp_path / "m.safetensors", framework="pt") as handle:
        raw = handle.metadata()
    assert json.loads(raw["target"]) == "bigram"
    assert json.loads(raw["kept"]) == 0 and json.loads(raw["total"]) == layout.n_masked


# --- generation never leaves the tokenizer's vocabulary ------------------------------------------


def favour_padded_rows(model: Any, real_vocab: int) -> Any:
    """Make the embedding rows from `real_vocab` on (padding, as in Pythia) the most likely."""

    def hook(module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        boosted = output.clone()
        boosted[..., real_vocab:] += 100.0
        return boosted

    return model.get_output_embeddings().register_forward_hook(hook)


@pytest.mark.parametrize("temperature", [0.0, 1.5])
def test_generation_stays_inside_the_tokenizer_vocabulary(
    tiny_model: Any, temperature: float
) -> None:
    """With the tokenizer's vocab_size, ids of padded embedding rows are never generated, greedy
    or sampled, even where those rows are the most likely; the real rows' choices are unchanged."""
    real = VOCAB - 10
    prompt = torch.randint(0, real, (2, 3), generator=torch.Generator().manual_seed(5))
    plain = generate(tiny_model, prompt, 12, temperature, seed=3, vocab_size=real)
    handle = favour_padded_rows(tiny_model, real)
    try:
        unrestricted = generate(tiny_model, prompt, 12, temperature, seed=3)
        restricted = generate(tiny_model, prompt, 12, temperature, seed=3, vocab_size=real)
    finally:
        handle.remove()
    assert bool((unrestricted >= real).all())  # the padded rows do win without the restriction
    assert int(restricted.max()) < real
    assert torch.equal(restricted, plain)
    one_line_user_error(
        lambda: generate(tiny_model, prompt, 1, vocab_size=VOCAB + 1), "only 50 embedding rows"
    )


def test_mask_generate_command_emits_only_tokenizer_ids(
    tmp_path: Path, small_bpe: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`bsn mask generate` on a model whose embedding is padded past the tokenizer (400 tokens,
    416 rows) and whose padded rows are the most likely: every generated id is a real token."""
    import argparse

    from transformers import PreTrainedTokenizerFast

    import bigram_subnetworks.masks.toolkit as toolkit
    from bigram_subnetworks.data.tokenizer import vocab_size_of
    from bigram_subnetworks.mask_cli import add_mask_commands

    real = vocab_size_of(small_bpe)
    model = tiny_lm(
        vocab=real + 16, layers=1, ff=32, positions=64, tie_word_embeddings=False
    ).train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # every final hidden state is b; the padded rows point along it
        b = torch.randn(16, generator=gen)
        model.gpt_neox.final_layer_norm.weight.zero_()
        model.gpt_neox.final_layer_norm.bias.copy_(b)
        head = model.get_output_embeddings().weight
        head.copy_(0.1 * torch.randn(head.shape, generator=gen))
        head[real:] = b
    model.save_pretrained(tmp_path)
    PreTrainedTokenizerFast(tokenizer_object=small_bpe).save_pretrained(tmp_path)

    generated: list[torch.Tensor] = []
    real_generate = toolkit.generate

    def record(*args: Any, **kwargs: Any) -> torch.Tensor:
        generated.append(real_generate(*args, **kwargs))
        return generated[-1]

    monkeypatch.setattr(toolkit, "generate", record)
    parser = argparse.ArgumentParser()
    add_mask_commands(parser.add_subparsers(dest="command"))
    for temperature in ("0", "1.0"):
        argv = ["mask", "generate", "--model-dir", str(tmp_path), "--prompt", "We the people"]
        args = parser.parse_args([*argv, "--max-new-tokens", "6", "--temperature", temperature])
        args.func(args)
    assert len(generated) == 2
    assert all(ids.numel() == 6 and int(ids.max()) < real for ids in generated)
    assert capsys.readouterr().out.startswith("We the people")
