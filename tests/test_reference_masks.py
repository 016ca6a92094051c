"""The paper authors' released masks: the restricted unpickler, `bsn mask import`, the
reference_mask stage and the overlap stage's comparison with them.

Files are built the way the authors' training code builds them (a dict from the model's own
parameter names of the masked weights, sorted, to `np.array(mask_params) > 0.0`, plus
`orig_model_name`, pickled with the highest protocol); the parameters they mask are chosen here by
their rule on names, independently of `models.layout`."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from bigram_subnetworks.analysis import overlap as ov
from bigram_subnetworks.cli import main
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.masks import reference as ref
from bigram_subnetworks.masks.toolkit import load_mask, save_mask
from bigram_subnetworks.models.layout import layout_of

pytestmark = pytest.mark.usefixtures("torch_single_thread")
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def authors_targets(model: Any) -> list[str]:
    """The weights the authors mask, by their rule on names (paper_code select_layers)."""
    names = list(model.state_dict())
    if model.config.model_type == "gpt2":
        return sorted(n for n in names if ".h." in n and n.endswith("weight") and "ln" not in n)
    # their transformers named GPT-NeoX's unembedding embed_out (excluded as an "embed")
    excluded = ("embed", "layernorm", "final_layer_norm", "lm_head")
    return sorted(n for n in names if n.endswith("weight") and not any(e in n for e in excluded))


def authors_dict(model: Any, seed: int = 0, orig: str | None = "EleutherAI/pythia-160m") -> dict:
    """A mask dict as the authors make one: sign of random mask parameters, as numpy bools."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {}
    for name in authors_targets(model):
        params = torch.randn(model.state_dict()[name].shape, generator=generator)
        out[name] = np.array(params.cpu()) > 0.0
    if orig is not None:
        out["orig_model_name"] = orig
    return out


def write_pickle(path: Path, content: Any, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    return path


def one_line(call: Any, match: str) -> str:
    with pytest.raises(UserError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def import_file(path: Path, model: Any, out: Path, label: str | None = None) -> dict:
    return ref.import_reference(str(path), label, model, {"model": "tiny"}, out)


# --- what the authors' files hold, mapped onto the model ---------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_an_authors_file_imports_entry_for_entry(
    tiny_model: Any, tmp_path: Path, protocol: int
) -> None:
    layout = layout_of(tiny_model)
    content = authors_dict(tiny_model, seed=protocol)
    assert sorted(layout.masked) == authors_targets(tiny_model)  # the same weights are masked
    source = write_pickle(tmp_path / "subnetwork_dict_lambda1e1.pickle", content, protocol)
    metadata = import_file(source, tiny_model, tmp_path / "m.safetensors")
    mask, stored = load_mask(tmp_path / "m.safetensors", layout)
    for name in layout.masked:
        assert np.array_equal(mask[name].numpy(), content[name]), name
    assert stored["lambda"] == "1e1" and stored["target"] == "bigram"  # λ from the file name
    assert stored["reference"]["orig_model_name"] == "EleutherAI/pythia-160m"
    assert stored["reference"]["file"] == str(source) and stored["sources"] == [str(source)]
    assert metadata["kept"] == sum(int(content[n].sum()) for n in layout.masked)


def test_fused_qkv_rows_keep_their_stored_interleaving(tiny_neox: Any, tmp_path: Path) -> None:
    """GPT-NeoX: head h owns query_key_value rows [3·h·hs, 3·(h+1)·hs) (Q_h, K_h, V_h); a file
    keeping exactly those rows of head 1 is head 1's Q, K and V here, nothing of the others."""
    layout = layout_of(tiny_neox)
    content = {n: np.zeros(layout.shapes[n], dtype=bool) for n in layout.masked}
    hs, name = layout.head_size, layout.param(0, "Q")
    content[name][3 * hs : 6 * hs, :] = True
    mask, _ = ref.to_mask(content, "f", layout, ref.parameter_shapes(tiny_neox))
    for head in range(layout.n_heads):
        for block in layout.head_blocks(0, head, "QKV"):
            assert bool(block.select(mask[block.param]).all()) is (head == 1)
            assert bool(block.select(mask[block.param]).any()) is (head == 1)


def test_gpt2_conv1d_columns_stay_in_their_stored_layout(tiny_gpt2: Any, tmp_path: Path) -> None:
    """GPT-2: the authors' arrays are Conv1D's (in, out); c_attn's column h·hs.. is Q of head h.
    A transposed file is refused, saying so."""
    layout = layout_of(tiny_gpt2)
    content = {n: np.zeros(layout.shapes[n], dtype=bool) for n in layout.masked}
    hs, name = layout.head_size, layout.param(1, "Q")
    content[name][:, 2 * hs : 3 * hs] = True  # Q of head 2
    mask, _ = ref.to_mask(content, "f", layout, ref.parameter_shapes(tiny_gpt2))
    q_block = layout.head_blocks(1, 2, "Q")[0]
    assert bool(q_block.select(mask[name]).all())
    assert int(mask[name].sum()) == q_block.size
    content[name] = np.ascontiguousarray(content[name].T)
    error = one_line(
        lambda: ref.to_mask(content, "f.pickle", layout, ref.parameter_shapes(tiny_gpt2)),
        "has shape",
    )
    assert "transpose" in error and name in error


def test_kept_embeddings_and_norms_are_accepted_dropped_ones_refused(
    tiny_neox: Any, tmp_path: Path
) -> None:
    layout = layout_of(tiny_neox)
    content = authors_dict(tiny_neox)
    shapes = ref.parameter_shapes(tiny_neox)
    whole = ["gpt_neox.embed_in.weight", "lm_head.weight", "gpt_neox.final_layer_norm.weight"]
    for name in whole:
        content[name] = np.ones(shapes[name], dtype=bool)
    whole.append("embed_out.weight")  # older transformers' name of the unembedding
    content["embed_out.weight"] = np.ones(shapes["lm_head.weight"], dtype=bool)
    source = write_pickle(tmp_path / "subnetwork_dict_lambda1.pickle", content)
    metadata = import_file(source, tiny_neox, tmp_path / "m.safetensors")
    assert metadata["reference"]["kept_whole"] == sorted(whole)
    assert metadata["total"] == layout.n_masked
    content["gpt_neox.embed_in.weight"][3, 2] = False
    write_pickle(source, content)
    error = one_line(lambda: import_file(source, tiny_neox, tmp_path / "x.safetensors"), "drops 1")
    assert "gpt_neox.embed_in.weight" in error and str(source) in error
    assert not (tmp_path / "x.safetensors").exists()


def test_files_that_do_not_fit_the_model_are_refused_in_one_line(
    tiny_neox: Any, tiny_gpt2: Any, tmp_path: Path
) -> None:
    layout = layout_of(tiny_neox)
    good = authors_dict(tiny_neox)
    qkv = layout.param(0, "Q")
    cases: list[tuple[Any, str]] = [
        ({k: v for k, v in good.items() if k != qkv}, "no mask for"),
        ({**good, "gpt_neox.layers.9.mlp.dense_h_to_4h.weight": good[qkv]}, "not a parameter"),
        ({**good, qkv: good[qkv][:-1]}, "has shape"),
        ({**good, qkv: good[qkv].astype(np.int64) * 2}, "other than 0 and 1"),
        ({**good, qkv: good[qkv].astype(np.float32)}, "not a binary numpy array"),
        ({**good, "orig_model_name": 7}, "not a model id"),
        ([good[qkv]], "holds a list"),
        ({"orig_model_name": "x"}, "holds no masks"),
        (authors_dict(tiny_gpt2), "c_attn.weight is not a parameter of this GPT-NeoX"),
    ]
    for i, (content, message) in enumerate(cases):
        source = write_pickle(tmp_path / f"subnetwork_dict_lambda1e{i + 1}.pickle", content)
        error = one_line(lambda s=source: import_file(s, tiny_neox, tmp_path / "o"), message)
        assert str(source) in error
    assert not (tmp_path / "o").exists()
    # a 0/1 uint8 array is a mask too
    source = write_pickle(tmp_path / "u.pickle", {**good, qkv: good[qkv].astype(np.uint8)})
    import_file(source, tiny_neox, tmp_path / "u.safetensors", "1")
    # the file must be the model's: its Hub id, when both are known
    identity = {"model": "m", "id": "EleutherAI/pythia-70m"}
    source = write_pickle(tmp_path / "subnetwork_dict_lambda1.pickle", good)
    one_line(
        lambda: ref.import_reference(str(source), None, tiny_neox, identity, tmp_path / "o"),
        "a mask of EleutherAI/pythia-160m, but the model is EleutherAI/pythia-70m",
    )


def test_damaged_and_oversized_files_are_refused(tiny_neox: Any, tmp_path: Path) -> None:
    good = pickle.dumps(authors_dict(tiny_neox), protocol=5)
    cut = tmp_path / "subnetwork_dict_lambda1.pickle"
    cut.write_bytes(good[: len(good) // 2])
    one_line(lambda: import_file(cut, tiny_neox, tmp_path / "o"), "not a readable mask pickle")
    shapes = ref.parameter_shapes(tiny_neox)
    big = tmp_path / "big.pickle"
    big.write_bytes(good + b"\0" * ref.max_file_bytes(shapes))
    one_line(lambda: import_file(big, tiny_neox, tmp_path / "o", "1"), "bytes, more than")
    one_line(lambda: import_file(tmp_path / "none.pickle", tiny_neox, tmp_path / "o"), "not found")
    no_label = write_pickle(tmp_path / "mine.pickle", authors_dict(tiny_neox))
    one_line(lambda: import_file(no_label, tiny_neox, tmp_path / "o"), "no λ in its name")


# --- the restricted unpickler -----------------------------------------------------------------


class _RunsACommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class _ImportsAModule:
    def __reduce__(self) -> tuple[Any, ...]:
        return (__import__, ("subprocess",))


class _Evaluates:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, (self.code,))


def test_a_malicious_pickle_is_refused_and_nothing_in_it_runs(
    tiny_neox: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    content = authors_dict(tiny_neox)
    attacks = {
        "system": {**content, "orig_model_name": _RunsACommand(f"touch {marker}")},
        "hidden": {**content, "extra": [np.zeros(2), _RunsACommand(f"touch {marker}")]},
        "import": {**content, "orig_model_name": _ImportsAModule()},
        "eval": {**content, "x": _Evaluates(f"open({str(marker)!r}, 'w')")},
    }
    for name, attack in attacks.items():
        source = write_pickle(tmp_path / f"subnetwork_dict_lambda1e{len(name)}.pickle", attack)
        error = one_line(lambda s=source: import_file(s, tiny_neox, tmp_path / "o"), "refused")
        assert str(source) in error, error
        assert not marker.exists(), name
    assert "posix.system" in one_line(
        lambda: ref.read_pickle(
            write_pickle(tmp_path / "p.pickle", _RunsACommand(f"touch {marker}")), 1 << 20
        ),
        "refused",
    )
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_allowed_constructors_refuse_arguments_no_mask_needs(tmp_path: Path) -> None:
    from numpy._core.multiarray import _reconstruct

    def reduce_pickle(function: Any, args: tuple) -> bytes:
        class Call:
            def __reduce__(self) -> tuple[Any, ...]:
                return (function, args)

        return pickle.dumps(Call(), protocol=4)

    huge = reduce_pickle(_reconstruct, (np.ndarray, (1 << 40,), b"b"))
    sized = reduce_pickle(bytearray, (1 << 40,))
    direct = reduce_pickle(np.ndarray, ((1 << 40,), np.dtype(bool)))
    objects = pickle.dumps({"w": np.array([1, "a"], dtype=object)}, protocol=4)
    for i, (data, message) in enumerate(
        [
            (huge, "array start"),
            (sized, "bytearray of int"),
            (objects, "dtype"),
            (direct, "numpy.ndarray"),
        ]
    ):
        path = tmp_path / f"{i}.pickle"
        path.write_bytes(data)
        one_line(lambda p=path: ref.read_pickle(p, 1 << 20), message)


# --- the command, the stage and the comparison -------------------------------------------------


def test_bsn_mask_import_from_a_file_and_from_an_offline_hub_cache(
    tiny_model_dirs: dict[str, Path],
    tiny_loaded_models: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    model = tiny_loaded_models["gpt2"]
    content = authors_dict(model, orig="openai-community/gpt2")
    source = write_pickle(tmp_path / "subnetwork_dict_lambda1e1.pickle", content)
    out = tmp_path / "imported.safetensors"
    argv = ["mask", "import", str(source), "--model-dir", str(tiny_model_dirs["gpt2"])]
    assert main([*argv, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "λ 1e1 mask of openai-community/gpt2" in printed and str(source) in printed
    assert main(["mask", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "authors' model: openai-community/gpt2" in info and "sha256" in info
    # the same file on the Hub: hf://<repo>, its name from --lambda, through an offline cache
    cache = tmp_path / "hub"
    snapshot = cache / "models--tylerachang--bigram-subnetworks-gpt2-small" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / source.name).write_bytes(source.read_bytes())
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = "hf://tylerachang/bigram-subnetworks-gpt2-small"
    out2 = tmp_path / "hub.safetensors"
    assert main(["mask", "import", hub, "--model", str(tiny_model_dirs["gpt2"]), "--lambda",
                 "1e1", "--out", str(out2)]) == 0  # fmt: skip
    mask, meta = load_mask(out2, layout_of(model))
    assert torch.equal(torch.cat([m.flatten() for m in mask.values()]),
                       torch.cat([m.flatten() for m in load_mask(out)[0].values()]))  # fmt: skip
    assert meta["reference"]["repo"] == "tylerachang/bigram-subnetworks-gpt2-small"
    assert meta["reference"]["commit"] == COMMIT and meta["sources"] == [f"{hub}/{source.name}"]
    capsys.readouterr()
    assert main([*argv, "--output", str(out2)[:-3], "--lambda", "1"]) == 0  # name or --lambda
    assert main(["mask", "import", f"{hub}/missing.pickle", *argv[3:], "--output", "x"]) == 1
    assert "missing.pickle not found" in capsys.readouterr().err


def _local_model_dir(root: Path, name: str, weights: Path) -> Path:
    folder = root / "results" / "r" / "models" / name
    folder.mkdir(parents=True)
    info = {"source": "local", "path": str(weights), "name": name}
    (folder / "model.json").write_text(json.dumps(info))
    return folder


def test_the_overlap_stage_compares_the_run_with_the_authors(
    tiny_model_dirs: dict[str, Path], tiny_loaded_models: dict[str, Any], tmp_path: Path
) -> None:
    """Importing a run's own mask as the authors' gives shares of 1.0; every number of the
    reference table equals what the overlap functions give on the same masks."""
    from bigram_subnetworks.artifacts import MASK, REFERENCE_MASK, REFERENCE_OVERLAP
    from bigram_subnetworks.io import read_parquet
    from bigram_subnetworks.models.loading import load_model, model_identity
    from bigram_subnetworks.report.reference import reference_table

    model_dir = _local_model_dir(tmp_path, "tiny", tiny_model_dirs["gpt_neox"])
    model, info = load_model(model_dir)
    layout, identity = layout_of(model), model_identity(model_dir, info)
    own = {}
    for target, label, seed in [("bigram", "1", 1), ("bigram", "1e1", 2), ("full", "1", 3)]:
        path = tmp_path / MASK.render(run="r", model="tiny", target=target, lam=label)
        generator = torch.Generator().manual_seed(seed)
        own[(target, label)] = {
            n: torch.rand(layout.shapes[n], generator=generator) < 0.3 for n in layout.masked
        }
        save_mask(path, own[(target, label)], {**identity, "target": target, "lambda": label})
    authors: dict[str, Any] = {n: t.numpy() for n, t in own[("bigram", "1e1")].items()}
    authors["orig_model_name"] = "EleutherAI/pythia-160m"  # the run's own mask, as the authors'

    other = authors_dict(model, seed=9)
    files = {"1e1": write_pickle(tmp_path / "subnetwork_dict_lambda1e1.pickle", authors)}
    files["1"] = write_pickle(tmp_path / "elsewhere" / "authors_lambda1.pickle", other)
    cfg = SimpleNamespace(
        seed=0,
        analysis=SimpleNamespace(overlap_draws=200),
        reference_masks={"tiny": {label: str(path) for label, path in files.items()}},
    )
    references = []
    for label in files:
        out = tmp_path / REFERENCE_MASK.render(run="r", model="tiny", lam=label)
        ref.run_stage(cfg, model="tiny", lam=label, model_dir=model_dir, mask=out)  # type: ignore[arg-type]
        references.append(out)
    selection = tmp_path / "selection.json"
    chosen = {"bigram": {"lambda": "1"}, "optimal": {"lambda": "1"}}
    selection.write_text(json.dumps({"models": {"tiny": chosen}}))
    metrics = tmp_path / "results" / "r" / "metrics"
    masks = [tmp_path / MASK.render(run="r", model="tiny", target=t, lam=lab) for t, lab in own]
    ov.run_stage(
        cfg,  # type: ignore[arg-type]
        models=[model_dir],
        masks=masks,
        selection=selection,
        overlap=metrics / "overlap.parquet",
        overlap_null=metrics / "overlap_null.parquet",
        references=references,
        reference_overlap=metrics / "reference_overlap.parquet",
    )
    table = read_parquet(metrics / "reference_overlap.parquet").to_pandas()
    assert list(table.columns) == REFERENCE_OVERLAP.schema.names and len(table) == 6
    rows = {(r.reference_lambda, r.target, r["lambda"]): r for _, r in table.iterrows()}
    same = rows[("1e1", "bigram", "1e1")]
    assert same.share_run_in_reference == 1.0 and same.share_reference_in_run == 1.0
    assert same.kept_run == same.kept_reference == same.observed
    reference_masks = {"1e1": authors, "1": other}
    for (ref_label, target, label), row in rows.items():
        theirs = {n: torch.from_numpy(reference_masks[ref_label][n]) for n in layout.masked}
        counts = ov.block_overlap(own[(target, label)], theirs, layout)
        expected = ov.overlap_test(counts, 200, 0, ov.row_blocks(own[(target, label)], theirs,
                                                                  layout))  # fmt: skip
        for field in ov.REFERENCE_RESULT_FIELDS:
            assert row[field] == getattr(expected, field), field
        assert row.share_run_in_reference == expected.share_a_in_b
        both = sum(int((own[(target, label)][n] & theirs[n]).sum()) for n in layout.masked)
        kept = sum(int(theirs[n].sum()) for n in layout.masked)
        assert row.share_reference_in_run == both / kept
        assert row.orig_model_name == "EleutherAI/pythia-160m"
    section = reference_table(metrics / "reference_overlap.parquet")
    assert section is not None and len(section.frame) == 6
    assert "1.000" in section.frame["share of the authors' in this run's"].to_list()
    assert reference_table(None) is None


def test_the_registry_imports_hub_references_where_the_network_is(tmp_path: Path) -> None:
    import yaml

    from bigram_subnetworks.config import ConfigError, validate_config
    from bigram_subnetworks.frontends import dvc_yaml, rule_specs
    from bigram_subnetworks.stages import STAGES, arguments, job_fields
    from bigram_subnetworks.validation import problems

    raw = yaml.safe_load(Path("config/pythia.yaml").read_text())
    raw["reference_masks"] = {
        "pythia-160m": {"1e1": "hf://tylerachang/bigram-subnetworks-pythia-160m", "1": "a.pickle"}
    }
    cfg = validate_config(raw)
    stage = STAGES["reference_mask"]
    assert stage.jobs(cfg) == [
        {"model": "pythia-160m", "lam": "1e1"},
        {"model": "pythia-160m", "lam": "1"},
    ]
    assert stage.network(cfg)
    args = arguments(stage, cfg, job_fields(cfg, stage.jobs(cfg)[0]))
    assert args[args.index("--mask") + 1].endswith(
        "/reference_masks/pythia-160m/lambda-1e1.safetensors"
    )
    overlap = set(STAGES["overlap"].ports(cfg))
    assert {"references", "reference_overlap"} <= overlap
    assert "reference_overlap" in STAGES["report"].ports(cfg)
    assert any(spec.name == "reference_mask" and spec.network for spec in rule_specs(cfg))
    assert "reference_mask" in dvc_yaml(cfg, "config/pythia.yaml")
    raw["reference_masks"] = {"pythia-160m": {"1": "a.pickle"}}
    cfg = validate_config(raw)
    assert not STAGES["reference_mask"].network(cfg)
    assert "reference_masks.pythia-160m.1: a.pickle is not a file" in " ".join(problems(cfg))
    (tmp_path / "f.pickle").write_bytes(b"")
    raw["reference_masks"] = {"pythia-160m": {"1": str(tmp_path / "f.pickle")}}
    assert not [p for p in problems(validate_config(raw)) if "reference_masks" in p]
    raw["reference_masks"] = None
    cfg = validate_config(raw)
    assert "references" not in STAGES["overlap"].ports(cfg) and not stage.enabled(cfg)
    for bad, message in [
        ({"nope": {"1": "a.pickle"}}, "not one of the configured models"),
        ({"pythia-160m": {"10": "a.pickle"}}, "not canonical"),
        ({"pythia-160m": {"1": "hf://only-owner"}}, "hf://<owner>/<repo>"),
        ({"pythia-160m": {}}, "at least 1"),
    ]:
        raw["reference_masks"] = bad
        with pytest.raises(ConfigError, match=message):
            validate_config(raw)


def test_the_authors_file_names() -> None:
    assert ref.authors_filename("1e1") == "subnetwork_dict_lambda1e1.pickle"
    assert ref.lambda_of_filename("x/subnetwork_dict_lambda1e2.pickle") == "1e2"
    assert ref.lambda_of_filename("mask.pickle") is None
    hub = ref.parse_source("hf://o/r@v2", "1")
    assert (hub.repo_id, hub.revision, hub.filename) == (
        "o/r",
        "v2",
        "subnetwork_dict_lambda1.pickle",
    )
    assert ref.parse_source("hf://o/r/sub/f.pickle", None).filename == "sub/f.pickle"
    assert ref.parse_source("local/f.pickle", None) == Path("local/f.pickle")


# --- real shapes ----------------------------------------------------------------------------------


def _meta_model(family: str) -> Any:
    """Pythia-70M (GPT-NeoX, fused QKV) or GPT-2 small (Conv1D) with their real shapes, on the
    meta device (names and shapes only; no weights)."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    with torch.device("meta"):
        if family == "gpt2":
            return GPT2LMHeadModel(GPT2Config())  # 12 layers, d 768, 12 heads
        config = GPTNeoXConfig(
            vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
            intermediate_size=2048, max_position_embeddings=2048, rotary_pct=0.25,
        )  # fmt: skip
        return GPTNeoXForCausalLM(config)


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2"])
def test_real_shaped_files_import_and_count_per_head(family: str, tmp_path: Path) -> None:
    """A Pythia-70M / GPT-2 small shaped file imports whole, and the per-head Q, K, V counts of
    the imported mask are the file's own, read independently: GPT-NeoX rows as (heads, Q|K|V,
    head size), GPT-2 columns as (Q|K|V, heads, head size)."""
    from bigram_subnetworks.masks.toolkit import block_counts

    model = _meta_model(family)
    layout = layout_of(model)
    rng = np.random.default_rng(3)
    content: dict[str, Any] = {
        name: rng.random(layout.shapes[name], dtype=np.float32) > 0.7
        for name in authors_targets(model)
    }
    content["orig_model_name"] = "openai-community/gpt2" if family == "gpt2" else "pythia-70m"
    source = write_pickle(tmp_path / "subnetwork_dict_lambda1e1.pickle", content)
    metadata = import_file(source, model, tmp_path / "m.safetensors")
    assert metadata["total"] == layout.n_masked == sum(a.size for a in content.values() if
                                                      isinstance(a, np.ndarray))  # fmt: skip
    mask, _ = load_mask(tmp_path / "m.safetensors", layout)
    hs, heads = layout.head_size, layout.n_heads
    counted = {(r["layer"], r["kind"]): r["kept"] for r in block_counts(mask, layout)}
    for layer in range(layout.n_layers):
        fused = content[layout.param(layer, "Q")]
        if family == "gpt2":
            per_kind = fused.reshape(-1, 3, heads, hs).sum(axis=(0, 2, 3))
        else:
            per_kind = fused.reshape(heads, 3, hs, -1).sum(axis=(0, 2, 3))
        for i, kind in enumerate("QKV"):
            assert counted[(layer, kind)] == per_kind[i], (layer, kind)


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.workflow
@pytest.mark.slow
def test_a_run_compares_its_masks_with_the_authors_from_the_hub_cache(
    tmp_path: Path, small_bpe: Any
) -> None:
    """A Hub model and the authors' mask of it, both in a hand-built cache, with the network
    blocked: the reference_mask stage (a network stage) finds the pickle in the cache, the
    overlap stage compares it with every trained mask and the report shows the section."""
    import pyarrow.parquet as pq
    import yaml

    from hub_cache import add_revision, build_hub_cache
    from projects import blocked, make_project, run
    from tiny_models import tiny_lm

    project = make_project(tmp_path / "p")
    cache = tmp_path / "hub"
    build_hub_cache(cache, "test/tiny", {"main": 3}, small_bpe)
    vocab = small_bpe.get_vocab_size()
    model = tiny_lm(vocab=vocab, positions=64, seed=3, ff=32, tie_word_embeddings=False)
    authors = authors_dict(model, orig="test/tiny")
    commit = add_revision(
        cache, "tylerachang/bigram-subnetworks-tiny", "main",
        {"subnetwork_dict_lambda1e1.pickle": pickle.dumps(authors, protocol=5)},
    )  # fmt: skip
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw |= {"run": "ref", "hub_cache": str(cache), "checkpoints": None}
    raw["tokenizer"] = {"name": "tiny", "source": "pretrained", "model": "test/tiny"}
    raw["models"] = {"tiny": {"source": "huggingface", "id": "test/tiny"}}
    raw["reference_masks"] = {"tiny": {"1e1": "hf://tylerachang/bigram-subnetworks-tiny"}}
    raw["lambdas"] = {"bigram": ["0", "1e1"], "full": ["1e1"]}  # the masks the overlap compares
    (project / "ref.yaml").write_text(yaml.safe_dump(raw))
    run(blocked(["snakemake", "--cores", "2", "--configfile", "ref.yaml"]), project, timeout=900)
    imported = project / "results/ref/reference_masks/tiny/lambda-1e1.safetensors"
    _, metadata = load_mask(imported)
    assert metadata["reference"]["commit"] == commit and metadata["id"] == "test/tiny"
    table = pq.read_table(project / "results/ref/metrics/reference_overlap.parquet").to_pylist()
    assert {(r["target"], r["lambda"]) for r in table} == {("bigram", "0"), ("bigram", "1e1"),
                                                         ("full", "1e1")}  # fmt: skip
    assert all(
        r["orig_model_name"] == "test/tiny" and r["reference_lambda"] == "1e1" for r in table
    )
    report = (project / "results/ref/report/index.html").read_text()
    assert "the authors&#x27; released ones" in report or "the authors' released ones" in report
