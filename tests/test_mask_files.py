"""Shareable masks: the bit-packed file format (version 2) and reading version 1, mask cards,
pruned-model export and pulling masks from a Hugging Face cache (offline)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from bigram_subnetworks.cli import main
from bigram_subnetworks.config import MaskSettings
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import canonical_safetensors, write_parquet
from bigram_subnetworks.masks.sharing import card_fields, measured_r, render_card
from bigram_subnetworks.masks.toolkit import (
    Mask,
    keep_all,
    kept,
    load_mask,
    masked,
    pack_bits,
    params_sha256,
    save_mask,
    total,
    unpack_bits,
)
from bigram_subnetworks.models.layout import Layout, layout_of
from bigram_subnetworks.models.loading import load_pretrained_dir

pytestmark = pytest.mark.usefixtures("torch_single_thread")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def random_mask(layout: Layout, seed: int, p: float = 0.4) -> Mask:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(layout.shapes[n], generator=gen) < p for n in layout.masked}


def same(a: Mask, b: Mask) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def one_line_user_error(call: Any, match: str) -> str:
    with pytest.raises(UserError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def raw_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(path, framework="pt") as handle:
        return {n: handle.get_tensor(n) for n in handle.keys()}, handle.metadata()  # noqa: SIM118


def write_raw(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    path.write_bytes(canonical_safetensors(save(tensors, metadata=metadata)))


@pytest.fixture
def layout(tiny_loaded_models: dict[str, Any]) -> Layout:
    return layout_of(tiny_loaded_models["gpt_neox"])


# --- format version 2 ---------------------------------------------------------------------------


def test_version_2_layout_is_as_documented(tmp_path: Path) -> None:
    """One 1-D uint8 tensor per parameter under its name; entry i of the row-major weight is bit
    i mod 8 (LSB first) of byte i // 8; the last byte's spare high bits are 0; the metadata names
    the format, the bit order and every shape."""
    gen = torch.Generator().manual_seed(0)
    mask = {"a.weight": torch.rand(3, 7, generator=gen) < 0.5, "b.weight": torch.ones(2, 4) > 0}
    save_mask(tmp_path / "m.safetensors", mask, {"target": "bigram"})
    tensors, raw = raw_file(tmp_path / "m.safetensors")
    assert json.loads(raw["bsn_mask_format"]) == 2 and raw["bsn_mask_format"] == "2"
    assert json.loads(raw["bsn_mask_bit_order"]) == "little"
    assert json.loads(raw["bsn_mask_shapes"]) == {"a.weight": [3, 7], "b.weight": [2, 4]}
    assert json.loads(raw["kept"]) == kept(mask) and json.loads(raw["total"]) == 29
    flat = mask["a.weight"].flatten().tolist()
    packed = tensors["a.weight"]
    assert packed.dtype == torch.uint8 and packed.shape == (3,)  # ceil(21 / 8)
    for i, bit in enumerate(flat):
        assert (int(packed[i // 8]) >> (i % 8)) & 1 == bit
    assert int(packed[2]) >> 5 == 0  # entries 16..20 use bits 0..4 of the last byte
    assert tensors["b.weight"].tolist() == [255]
    assert torch.equal(packed, torch.from_numpy(np.packbits(np.array(flat), bitorder="little")))


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (8,), (9,), (3, 5), (2, 3, 4), (16, 40)])
def test_pack_unpack_round_trip_any_shape(shape: tuple[int, ...], tmp_path: Path) -> None:
    n = math.prod(shape)
    mask = {"w": torch.rand(shape, generator=torch.Generator().manual_seed(n)) < 0.5}
    packed = pack_bits(mask["w"])
    assert packed.shape == ((n + 7) // 8,)
    assert torch.equal(unpack_bits(packed, shape), mask["w"])
    save_mask(tmp_path / "m.safetensors", mask, {})
    loaded, meta = load_mask(tmp_path / "m.safetensors")
    assert same(loaded, mask) and loaded["w"].dtype == torch.bool
    assert meta["bsn_mask_format"] == 2 and "bsn_mask_shapes" not in meta


def test_packed_files_are_an_eighth_of_unpacked(tmp_path: Path) -> None:
    mask = {f"l{i}.weight": torch.rand(256, 512) < 0.2 for i in range(4)}
    save_mask(tmp_path / "v2.safetensors", mask, {})
    write_version_1(tmp_path / "v1.safetensors", mask, {})
    v1, v2 = ((tmp_path / f"{v}.safetensors").stat().st_size for v in ("v1", "v2"))
    assert v1 >= 4 * 256 * 512 and v2 < 4 * 256 * 512 // 8 + 2048
    assert same(
        load_mask(tmp_path / "v1.safetensors")[0], load_mask(tmp_path / "v2.safetensors")[0]
    )


def test_loaded_masks_are_writable_and_independent(layout: Layout, tmp_path: Path) -> None:
    save_mask(tmp_path / "m.safetensors", keep_all(layout), {})
    first, _ = load_mask(tmp_path / "m.safetensors")
    second, _ = load_mask(tmp_path / "m.safetensors")
    first[layout.masked[0]][0, 0] = False
    assert second[layout.masked[0]].all()


def test_damaged_version_2_files_are_refused(tmp_path: Path) -> None:
    """Spare bits set, a wrong length, a non-uint8 tensor, missing or wrong shapes, another bit
    order or an unknown version: one-line errors naming the file."""
    mask = {"w": torch.rand(3, 5, generator=torch.Generator().manual_seed(1)) < 0.5}
    good = tmp_path / "good.safetensors"
    save_mask(good, mask, {})
    tensors, raw = raw_file(good)
    bad = tmp_path / "bad.safetensors"

    def refused(tensors: dict[str, torch.Tensor], metadata: dict[str, str], match: str) -> None:
        write_raw(bad, tensors, metadata)
        assert str(bad) in one_line_user_error(lambda: load_mask(bad), match)

    spare = tensors["w"].clone()
    spare[-1] |= 0x80  # 15 entries: bit 7 of byte 1 is padding
    refused({"w": spare}, raw, "disagree with its metadata")
    refused({"w": torch.cat([tensors["w"], torch.zeros(1, dtype=torch.uint8)])}, raw, "disagree")
    refused({"w": tensors["w"][:1].clone()}, raw, "disagree")
    refused({"w": mask["w"]}, raw, "1-D uint8 bit-packed")
    refused({"w": tensors["w"].view(1, 2)}, raw, "1-D uint8 bit-packed")
    refused(tensors, raw | {"bsn_mask_shapes": json.dumps({"w": [3, 6]})}, "disagree")
    refused(tensors, raw | {"bsn_mask_shapes": json.dumps({"v": [3, 5]})}, "shapes metadata")
    refused(tensors, raw | {"bsn_mask_shapes": json.dumps({"w": "3x5"})}, "shape '3x5'")
    refused(tensors, raw | {"bsn_mask_bit_order": '"big"'}, "bit order")
    no_shapes = {k: v for k, v in raw.items() if k != "bsn_mask_shapes"}
    refused(tensors, no_shapes, "shapes metadata")
    refused(tensors, raw | {"bsn_mask_format": "3"}, "format 3 is not one this bsn reads")
    refused(tensors, raw | {"bsn_mask_format": '"2"'}, "format '2' is not one")
    refused(tensors, raw | {"kept": str(kept(mask) + 1)}, "disagree with its metadata")


# --- format version 1 (files written before the bit-packed format) -------------------------------


def write_version_1(path: Path, mask: Mask, metadata: dict[str, Any]) -> None:
    """A mask file exactly as save_mask wrote it before format version 2: one bool tensor per
    parameter, metadata JSON-encoded plus kept, total and params_sha256, no format key."""
    encoded = {k: json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    encoded |= {
        "kept": json.dumps(kept(mask)),
        "total": json.dumps(total(mask)),
        "params_sha256": json.dumps(params_sha256({k: v.shape for k, v in mask.items()})),
    }
    tensors = {name: t.detach().cpu().contiguous() for name, t in mask.items()}
    path.write_bytes(canonical_safetensors(save(tensors, metadata=encoded)))


# sha256 of the file the version-1 save_mask (git a882686) wrote for LEGACY_MASK and LEGACY_META.
LEGACY_SHA256 = "8ff5d3199876fd7f5dae0d3ded312198cb386bc863c64c3f37cb8569c8740a6b"
LEGACY_MASK = {
    "gpt_neox.layers.0.attention.dense.weight": torch.arange(15).reshape(3, 5) % 3 == 0,
    "gpt_neox.layers.0.mlp.dense_4h_to_h.weight": torch.arange(35).reshape(5, 7) % 4 == 1,
}
LEGACY_META = {
    "model": "tiny",
    "source": "embedded",
    "revision": "final",
    "weights_sha256": "ab" * 32,
    "target": "bigram",
    "lambda": "1e1",
    "seed": 0,
    "steps": 3,
}


def test_version_1_writer_matches_the_old_code(tmp_path: Path) -> None:
    write_version_1(tmp_path / "v1.safetensors", LEGACY_MASK, LEGACY_META)
    digest = hashlib.sha256((tmp_path / "v1.safetensors").read_bytes()).hexdigest()
    assert digest == LEGACY_SHA256


def test_version_1_files_still_load(layout: Layout, tmp_path: Path) -> None:
    """Old files load as before: same bool tensors and metadata (plus format 1), the model and
    weights checks apply, damage is caught, and saving them again writes version 2."""
    path = tmp_path / "old.safetensors"
    write_version_1(path, LEGACY_MASK, LEGACY_META)
    mask, meta = load_mask(path)
    assert same(mask, LEGACY_MASK)
    assert meta == LEGACY_META | {"kept": kept(mask), "total": 50, "bsn_mask_format": 1} | {
        "params_sha256": params_sha256({k: v.shape for k, v in mask.items()})
    }
    assert card_fields(meta)[-1] == ("file format", "1 (safetensors, one bool byte per entry)")

    trained = random_mask(layout, 3)
    write_version_1(path, trained, {"weights_sha256": "a" * 64})
    assert same(load_mask(path, layout, {"weights_sha256": "a" * 64})[0], trained)
    one_line_user_error(lambda: load_mask(path, layout, {"weights_sha256": "b" * 64}), "other w")
    raw = bytearray(path.read_bytes())
    raw[8 + int.from_bytes(raw[:8], "little")] ^= 1
    path.write_bytes(bytes(raw))
    one_line_user_error(lambda: load_mask(path), "disagree with its metadata")

    write_version_1(path, LEGACY_MASK, LEGACY_META)
    save_mask(tmp_path / "new.safetensors", *load_mask(path))
    again, meta2 = load_mask(tmp_path / "new.safetensors")
    assert same(again, LEGACY_MASK) and meta2 == meta | {"bsn_mask_format": 2}


# --- cards --------------------------------------------------------------------------------------


def trained_metadata(tmp_path: Path, layout: Layout, model: Any) -> tuple[Path, dict[str, Any]]:
    """A mask written by train_mask (λ = inf: no training needed) for a Hub-identified model."""
    from bigram_subnetworks.masks.train import MaskRun, train_mask

    identity = {"model": "tiny", "source": "huggingface", "id": "org/tiny", "revision": "main"}
    run = MaskRun("full", "inf", MaskSettings(), 7, identity | {"commit": COMMIT})
    output = tmp_path / "masks" / "tiny" / "full" / "lambda-inf.safetensors"
    train_mask(model, run, np.zeros((1, 4), np.int64), None, output, torch.device("cpu"))
    return output, load_mask(output, layout)[1]


def test_trained_masks_carry_the_card_fields(tiny_neox: Any, tmp_path: Path) -> None:
    layout = layout_of(tiny_neox)
    _, meta = trained_metadata(tmp_path, layout, tiny_neox)
    assert meta["model_type"] == "gpt_neox" and meta["settings"] == MaskSettings().model_dump()
    settings_hash = hashlib.sha256(json.dumps(meta["settings"], sort_keys=True).encode())
    assert meta["settings_sha256"] == settings_hash.hexdigest()
    assert len(meta["run_sha256"]) == 64 and meta["bsn_mask_format"] == 2
    fields = dict(card_fields(meta))
    assert fields["model"] == "org/tiny" and fields["family"] == "GPT-NeoX (Pythia)"
    assert fields["weights"] == f"commit {COMMIT} (revision main)"
    assert (fields["target"], fields["lambda"], fields["seed"]) == ("full", "inf", "7")
    assert fields["kept"] == f"0 of {layout.n_masked:,} (0.0000%)"
    assert fields["r with bigram surprisal"] == "not measured"
    assert fields["settings sha256"] == meta["settings_sha256"]
    assert fields["file format"] == "2 (safetensors, bit-packed: 1 bit per entry)"


def test_card_command_fills_r_from_the_metrics(
    tiny_neox: Any, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path, meta = trained_metadata(tmp_path, layout_of(tiny_neox), tiny_neox)
    metrics = tmp_path / "masks.parquet"
    rows = [
        ("tiny", "full", "inf", "bigram_r", 0.25),
        ("tiny", "full", "inf", "full_model_r", 0.5),
        ("tiny", "full", "1e1", "bigram_r", 0.9),  # another mask
        ("other", "full", "inf", "bigram_r", 0.8),
    ]
    columns = ["model", "target", "lambda", "metric", "value"]
    table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)})
    write_parquet(table.append_column("lambda_value", pa.array([math.inf] * 4)), metrics)
    assert measured_r(metrics, meta) == {"bigram_r": 0.25, "full_model_r": 0.5}

    assert main(["mask", "card", str(path)]) == 0
    plain = capsys.readouterr().out
    assert plain == render_card(meta, None, mask_file=path.name)
    assert plain.startswith("---\ntags:") and 'base_model: "org/tiny"' in plain
    assert "# full mask of org/tiny, λ = inf" in plain
    assert "| r with bigram surprisal | not measured |" in plain
    assert f"| params sha256 | {meta['params_sha256']} |" in plain

    card = tmp_path / "README.md"
    argv = ["mask", "card", str(path), "--metrics", str(metrics), "--output", str(card)]
    assert main(argv) == 0
    assert capsys.readouterr().out == f"{card}: card of {path}\n"
    text = card.read_text()
    assert "| r with bigram surprisal | 0.2500 |" in text
    assert "| r with the full model's surprisal | 0.5000 |" in text
    assert "not measured" not in text and '"max_steps": 15000' in text

    assert main(["mask", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"kept 0 of {meta['total']:,}" in out.splitlines()[0]
    for line in ("model: org/tiny", "target: full", "lambda: inf", "file format: 2 (", "settings:"):
        assert f"  {line}" in out

    missing = tmp_path / "nothing.parquet"
    write_parquet(table.slice(2), missing)
    assert main(["mask", "card", str(path), "--metrics", str(missing)]) == 0
    captured = capsys.readouterr()
    assert "has no r of this mask (model tiny, target full, lambda inf)" in captured.err
    assert "| r with bigram surprisal | not measured |" in captured.out


# --- export -------------------------------------------------------------------------------------


@pytest.fixture
def model_folder(
    tmp_path: Path, tiny_model_dirs: dict[str, Path], small_bpe: Any, request: Any
) -> Path:
    """A save_pretrained folder of a tiny model, with a tokenizer."""
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dirs[getattr(request, "param", "gpt_neox")], folder)
    PreTrainedTokenizerFast(tokenizer_object=small_bpe).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("model_folder", ["gpt_neox", "gpt2"], indirect=True)
def test_export_writes_a_pruned_model_transformers_loads(
    model_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The export loads with AutoModelForCausalLM as is: dropped entries exactly +0.0, kept
    entries and every other parameter the original's, logits equal to the masked model's;
    tokenizer files and a card come with it."""
    from transformers import AutoModelForCausalLM

    original = load_pretrained_dir(model_folder)
    layout = layout_of(original)
    mask = random_mask(layout, 5)
    mask_path = tmp_path / "mask.safetensors"
    save_mask(mask_path, mask, {"target": "bigram", "lambda": "1e1", "model": "tiny"})
    out = tmp_path / "pruned"
    argv = ["mask", "export", str(mask_path), "--model-dir", str(model_folder)]
    assert main([*argv, "--output", str(out)]) == 0
    assert f"{total(mask) - kept(mask):,} of {total(mask):,} masked entries set to 0" in (
        capsys.readouterr().out
    )

    pruned = AutoModelForCausalLM.from_pretrained(out).eval()
    before = dict(original.named_parameters())
    for name, param in pruned.named_parameters():
        if name in mask:
            dropped = param[~mask[name]]
            assert torch.equal(
                dropped.view(torch.int32), torch.zeros_like(dropped).view(torch.int32)
            )
            assert torch.equal(param[mask[name]], before[name][mask[name]])
        else:
            assert torch.equal(param, before[name]), name
    ids = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), masked(original, mask):
        reference = original(ids).logits
    with torch.no_grad():
        assert torch.equal(pruned(ids).logits, reference)

    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (model_folder / name).read_bytes()
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "| zeroed entries |" in card
    assert f"sha256 {hashlib.sha256(mask_path.read_bytes()).hexdigest()}" in card
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_export_from_a_workflow_folder_and_in_half_precision(
    model_folder: Path, tmp_path: Path
) -> None:
    """A workflow model folder (model.json + final/) works like a plain folder; the mask's
    weights identity is checked; float16 keeps exact zeros; a non-empty output is refused."""
    from transformers import AutoModelForCausalLM

    from bigram_subnetworks.masks.sharing import export_pruned
    from bigram_subnetworks.models.loading import model_identity

    workflow = tmp_path / "models" / "tiny"
    shutil.copytree(model_folder, workflow / "final")
    (workflow / "model.json").write_text(json.dumps({"source": "embedded", "name": "tiny"}))
    identity = model_identity(workflow, {"source": "embedded", "name": "tiny"})
    layout = layout_of(load_pretrained_dir(model_folder))
    mask = random_mask(layout, 6)
    mask_path = tmp_path / "m.safetensors"
    save_mask(mask_path, mask, identity | {"target": "bigram", "lambda": "0"})

    out = tmp_path / "half"
    done = export_pruned(mask_path, workflow, out, "float16")
    assert done["tokenizer"].startswith("copied") and done["dtype"] == "float16"
    half = AutoModelForCausalLM.from_pretrained(out)
    original = dict(load_pretrained_dir(model_folder).named_parameters())
    for name, param in half.named_parameters():
        assert param.dtype == torch.float16
        if name in mask:
            assert not param[~mask[name]].any()
            assert torch.equal(param[mask[name]], original[name][mask[name]].half())
    one_line_user_error(lambda: export_pruned(mask_path, workflow, out), "not an empty folder")

    save_mask(mask_path, mask, {"weights_sha256": "0" * 64})
    one_line_user_error(lambda: export_pruned(mask_path, workflow, tmp_path / "x"), "other w")
    (tmp_path / "empty").mkdir()
    other = keep_all(layout)
    other.pop(layout.masked[0])
    save_mask(mask_path, other, {})
    one_line_user_error(lambda: export_pruned(mask_path, model_folder, tmp_path / "empty"), "mask")
    assert not any((tmp_path / "empty").iterdir()) and not (tmp_path / "x").exists()


# --- pull ---------------------------------------------------------------------------------------


def hub_cache(root: Path, repo: str, files: dict[str, bytes], kind: str = "models") -> Path:
    """A Hugging Face cache holding `files` in `repo` at COMMIT, refs main and v1 -> COMMIT."""
    folder = root / f"{kind}--{repo.replace('/', '--')}"
    for ref in ("main", "v1"):
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$HF_HOME/hub of a hand-built cache, offline."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf" / "hub"


def test_pull_fetches_a_published_mask_offline(
    layout: Layout, offline_hub: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    mask = random_mask(layout, 7)
    published = tmp_path / "published.safetensors"
    save_mask(published, mask, {"target": "bigram", "lambda": "1e1"})
    card = render_card(load_mask(published)[1]).encode()
    hub_cache(
        offline_hub, "org/masks", {"mask.safetensors": published.read_bytes(), "README.md": card}
    )
    hub_cache(offline_hub, "org/data", {"other.safetensors": published.read_bytes()}, "datasets")

    out = tmp_path / "out" / "pulled.safetensors"
    assert main(["mask", "pull", "org/masks", "--output", str(out)]) == 0
    assert out.read_bytes() == published.read_bytes()
    assert same(load_mask(out, layout)[0], mask)
    printed = capsys.readouterr().out
    assert f"mask.safetensors of org/masks@{COMMIT}" in printed and "kept" in printed
    for revision in ("v1", COMMIT):
        out.unlink()
        assert (
            main(["mask", "pull", "org/masks", "--revision", revision, "--output", str(out)]) == 0
        )
        assert out.read_bytes() == published.read_bytes()
    argv = ["mask", "pull", "org/data", "--repo-type", "dataset", "--filename", "other.safetensors"]
    assert main([*argv, "--output", str(tmp_path / "d.safetensors")]) == 0
    assert (tmp_path / "d.safetensors").read_bytes() == published.read_bytes()


def test_pull_respects_hf_hub_cache(
    layout: Layout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bigram_subnetworks.masks.sharing import pull_mask

    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_mask(tmp_path / "m.safetensors", keep_all(layout), {})
    hub_cache(
        tmp_path / "cache",
        "org/masks",
        {"mask.safetensors": (tmp_path / "m.safetensors").read_bytes()},
    )
    meta, commit = pull_mask("org/masks", tmp_path / "o.safetensors")
    assert commit == COMMIT and meta["kept"] == layout.n_masked


def test_pull_failures_are_one_line_and_name_the_repo_and_file(
    layout: Layout, offline_hub: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    hub_cache(offline_hub, "org/masks", {"mask.safetensors": b"not a safetensors file" * 4})
    out = tmp_path / "out.safetensors"
    cases = [
        (["org/missing"], "model repo org/missing@main: mask.safetensors not found"),
        (["org/masks", "--filename", "lambda-1.safetensors"], "lambda-1.safetensors not found"),
        (["org/masks", "--revision", "v9"], "org/masks@v9: mask.safetensors not found"),
        (["org/masks", "--repo-type", "dataset"], "dataset repo org/masks@main"),
        (["org/masks"], "mask.safetensors is not a usable mask file"),
        (["not a repo id!"], "not a valid repo id"),
    ]
    for args, message in cases:
        assert main(["mask", "pull", *args, "--output", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        if "not found" in message:
            assert "HF_HUB_OFFLINE" in err
    assert not out.exists()
