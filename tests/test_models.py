"""The model stage: pretraining embedded models, loading local and Hub models, the CLI stages."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from bigram_subnetworks.cli import main
from bigram_subnetworks.config import (
    DataSettings,
    EmbeddedModel,
    TrainedTokenizer,
    checkpoint_steps,
    validate_config,
)
from bigram_subnetworks.data.bigrams import build_bigram_stats
from bigram_subnetworks.data.tokenize import tokenize_corpus
from bigram_subnetworks.data.tokenizer import build_tokenizer, load_tokenizer
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.masks.toolkit import load_mask
from bigram_subnetworks.models.hub import run_stage as fetch_stage
from bigram_subnetworks.models.loading import (
    load_checkpoint,
    load_model,
    load_pretrained_dir,
    model_identity,
)
from bigram_subnetworks.models.pretrain import learning_rate, prepare_model
from hub_cache import build_hub_cache

MODEL = {
    "source": "embedded",
    "layers": 2,
    "d_model": 16,
    "heads": 2,
    "pretrain": {
        "steps": 30,
        "batch_size": 4,
        "warmup_steps": 5,
        "checkpoints": 6,
        "eval_every": 10,
        "eval_sequences": 16,
    },
}


def config_dict(**models: dict[str, Any]) -> dict[str, Any]:
    return {
        "run": "test",
        "corpus": {"name": "c", "source": "sotu"},
        "tokenizer": {"name": "t", "source": "train", "vocab_size": 300},
        "data": {"seq_len": 32},
        "models": models or {"tiny": MODEL},
        "masks": {"lr": 0.05, "temp_increase": 1.1, "batch_size": 4, "max_steps": 12},
        "lambdas": {"bigram": ["0"], "full": ["1"]},
        "device": "cpu",
    }


@pytest.fixture(scope="module")
def data_dirs(
    tmp_path_factory: pytest.TempPathFactory,
    sotu_texts: list[str],
    write_documents: Callable[[Path, list[tuple[str, str]]], Path],
) -> tuple[Path, Path]:
    """(data dir, tokenizer dir) built by the real data stages from five addresses."""
    root = tmp_path_factory.mktemp("data")
    documents = write_documents(
        root / "documents.parquet",
        [("train", text) for text in sotu_texts[:4]] + [("eval", sotu_texts[4])],
    )
    tokenizer_dir, data_dir = root / "tokenizer", root / "tokens"
    build_tokenizer(
        TrainedTokenizer(name="t", source="train", vocab_size=300), documents, tokenizer_dir
    )
    tokenize_corpus(
        documents,
        load_tokenizer(tokenizer_dir),
        DataSettings(seq_len=32, max_train_sequences=400, max_eval_sequences=40),
        0,
        data_dir,
    )
    build_bigram_stats(data_dir / "tokens_train.parquet", data_dir)
    return data_dir, tokenizer_dir


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, data_dirs: tuple[Path, Path]) -> Path:
    output = tmp_path_factory.mktemp("run") / "models" / "tiny"
    prepare_model("tiny", validate_config(config_dict()), *data_dirs, output)
    return output


# ------------------------------------------------------------------------------ schedules


@given(total=st.integers(1, 200_000), count=st.integers(6, 40))
def test_checkpoints_are_distinct_log_spaced_and_include_both_ends(total: int, count: int) -> None:
    steps = checkpoint_steps(total, count)
    assert steps == sorted(set(steps))
    assert steps[0] == 0 and steps[-1] == total
    assert len(steps) == min(count, total + 1)
    if total >= 10_000 and count >= 8:  # log spacing: most checkpoints fall in the first 10%
        assert sum(s <= total // 10 for s in steps) > len(steps) // 2


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    spec = EmbeddedModel.model_validate(
        MODEL | {"pretrain": {"steps": 100, "warmup_steps": 10, "lr": 1e-3, "min_lr_ratio": 0.1}}
    )
    rates = [learning_rate(step, spec) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
    assert learning_rate(100, spec) == pytest.approx(1e-4)


# ---------------------------------------------------------------------------- pretraining


def test_pretraining_writes_checkpoints_final_model_log_and_info(pretrained: Path) -> None:
    info = json.loads((pretrained / "model.json").read_text())
    assert info["checkpoints"] == checkpoint_steps(30, 6)
    for step in info["checkpoints"]:
        folder = pretrained / f"step-{step}"
        assert (folder / "model.safetensors").is_file()
        assert (folder / "tokenizer.json").is_file()
    model = load_pretrained_dir(pretrained / "final")
    assert model.config.model_type == "gpt_neox" and model.config.vocab_size == 300
    log = pq.read_table(pretrained / "train_log.parquet").to_pydict()
    assert log["step"] == list(range(1, 31))
    assert log["train_loss"][-1] < log["train_loss"][0]
    assert [s for s, e in zip(log["step"], log["eval_loss"], strict=True) if e] == [10, 20, 30]
    assert info["final_eval_loss"] == log["eval_loss"][-1]
    assert info["bigram_baseline"]["cross_entropy"] > 0
    assert not list(pretrained.parent.glob(".*"))  # no staging folder left behind


def test_the_saved_tokenizer_loads_with_transformers(pretrained: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pretrained / "final")
    ids = tokenizer("Fellow citizens")["input_ids"]
    assert ids and tokenizer.decode(ids) == "Fellow citizens"
    assert tokenizer.eos_token_id == 0


def test_pretraining_is_deterministic(
    tmp_path: Path, data_dirs: tuple[Path, Path], pretrained: Path
) -> None:
    again = tmp_path / "tiny"
    prepare_model("tiny", validate_config(config_dict()), *data_dirs, again)
    for folder in ("step-0", "final"):
        first = load_file(pretrained / folder / "model.safetensors")
        second = load_file(again / folder / "model.safetensors")
        assert all(torch.equal(first[k], second[k]) for k in first)
    start = load_file(pretrained / "step-0" / "model.safetensors")
    end = load_file(pretrained / "final" / "model.safetensors")
    assert not all(torch.equal(start[k], end[k]) for k in start)


def test_an_unknown_model_name_is_refused(tmp_path: Path, data_dirs: tuple[Path, Path]) -> None:
    with pytest.raises(UserError, match=r"model 'nope' is not in the config \(models: tiny\)"):
        prepare_model("nope", validate_config(config_dict()), *data_dirs, tmp_path / "m")


# -------------------------------------------------------------------- local and Hub models


def test_local_models_are_checked_and_recorded(tmp_path: Path, pretrained: Path) -> None:
    local = {"source": "local", "path": str(pretrained / "final")}
    output = tmp_path / "local"
    raw = config_dict(mine=local)
    raw["tokenizer"] = {"name": "own", "source": "pretrained", "model": local["path"]}
    fetch_stage(validate_config(raw), model="mine", model_dir=output)
    model, stored = load_model(output)
    assert stored["model_type"] == "gpt_neox" and stored["final_step"] is None
    assert model.config.model_type == "gpt_neox"
    assert stored["path"] == str(pretrained / "final")
    identity = model_identity(output, stored)
    assert identity["revision"] == "final" and len(identity["weights_sha256"]) == 64
    embedded = model_identity(pretrained, json.loads((pretrained / "model.json").read_text()))
    assert identity["weights_sha256"] == embedded["weights_sha256"]  # the same weights


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, str]]:
    """A Hugging Face cache holding test/tiny (revisions main, step0, step30), with the Hub
    offline: nothing here may reach the network."""
    cache = tmp_path / "hub"
    commits = build_hub_cache(cache, "test/tiny", {"main": 3, "step0": 1, "step30": 3})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache, commits


def hub_config(cache: Path, **model: Any) -> Any:
    spec = {"source": "huggingface", "id": "test/tiny", "revision": "step30", **model}
    raw = config_dict(tiny=spec) | {"hub_cache": str(cache)}
    raw["tokenizer"] = {"name": "tiny", "source": "pretrained", "model": "test/tiny"}
    raw["lambdas"]["bigram"] = ["0"]
    raw["checkpoints"] = {"models": ["tiny"], "steps": [0, 30], "lambdas": ["0"]}
    return validate_config(raw)


def test_fetch_records_every_revision_and_jobs_load_them_by_commit(
    tmp_path: Path, hub: tuple[Path, dict[str, str]]
) -> None:
    cache, commits = hub
    cfg = hub_config(cache)
    output = tmp_path / "models" / "tiny"
    fetch_stage(cfg, model="tiny", model_dir=output)
    info = json.loads((output / "model.json").read_text())
    assert info["commit"] == commits["step30"] and info["final_step"] == 30
    for step, revision in (("0", "step0"), ("30", "step30")):
        record = info["checkpoints"][step]
        assert (record["revision"], record["commit"]) == (revision, commits[revision])
        snapshot = cache / "models--test--tiny" / "snapshots" / commits[revision]
        digest = hashlib.sha256((snapshot / "model.safetensors").read_bytes()).hexdigest()
        assert record["weights"] == {
            "format": "safetensors",
            "files": {"model.safetensors": digest},
        }
    assert info["weights"] == info["checkpoints"]["30"]["weights"] and info["dropped_steps"] == {}
    model, stored = load_model(output)
    assert model.config.model_type == "gpt_neox"
    assert model_identity(output, stored)["commit"] == commits["step30"]
    initial, identity = load_checkpoint(output, 0)
    assert identity["revision"] == "step0" and identity["commit"] == commits["step0"]
    name = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
    assert not torch.equal(
        dict(initial.named_parameters())[name], dict(model.named_parameters())[name]
    )
    with pytest.raises(UserError, match=r"checkpoint step 7 was not fetched \(fetched: \[0, 30\]"):
        load_checkpoint(output, 7)


def test_fetching_a_missing_revision_fails_in_one_line_naming_it(
    tmp_path: Path, hub: tuple[Path, dict[str, str]]
) -> None:
    cache, _ = hub
    cfg = hub_config(cache, revision="step999")
    with pytest.raises(UserError) as error:
        fetch_stage(cfg, model="tiny", model_dir=tmp_path / "tiny")
    assert "\n" not in str(error.value)
    assert "test/tiny: revision 'step999' not found in the cache" in str(error.value)
    cfg = hub_config(cache, checkpoint_revision="ckpt-{step}")
    with pytest.raises(UserError, match="revision 'ckpt-0' not found"):
        fetch_stage(cfg, model="tiny", model_dir=tmp_path / "tiny")
    assert not (tmp_path / "tiny" / "model.json").exists()


def test_checkpoints_load_by_step_with_their_own_identity(pretrained: Path) -> None:
    initial, identity = load_checkpoint(pretrained, 0)
    final, _ = load_model(pretrained)
    assert identity["revision"] == "step-0" and identity["step"] == 0
    final_identity = model_identity(pretrained, json.loads((pretrained / "model.json").read_text()))
    assert identity["weights_sha256"] != final_identity["weights_sha256"]
    name = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
    assert not torch.equal(
        dict(initial.named_parameters())[name], dict(final.named_parameters())[name]
    )
    with pytest.raises(UserError, match=r"no checkpoint at step 7 \(saved: \[0, 1, 2, 5, 13, 30\]"):
        load_checkpoint(pretrained, 7)


def test_a_folder_without_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a model directory"):
        load_pretrained_dir(tmp_path)


def test_damaged_model_weights_are_refused_in_one_line(tmp_path: Path, pretrained: Path) -> None:
    damaged = tmp_path / "final"
    damaged.mkdir()
    for source in (pretrained / "final").iterdir():
        (damaged / source.name).write_bytes(source.read_bytes())
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated download
    with pytest.raises(UserError, match="cannot load the model") as error:
        load_pretrained_dir(damaged)
    assert "\n" not in str(error.value) and str(damaged) in str(error.value)
    with pytest.raises(UserError, match=r"model\.json: file not found"):
        load_model(tmp_path)
    for info, problem in [
        ({"source": "local"}, "no path for a local model"),
        ({"source": "huggingface", "id": "x"}, "no revision, commit, checkpoint_revision"),
        ({"source": "ftp"}, "unknown source 'ftp'"),
    ]:
        (tmp_path / "model.json").write_text(json.dumps(info))
        with pytest.raises(UserError, match=problem) as error:
            load_model(tmp_path)
        assert "rerun its model stage" in str(error.value)


# ---------------------------------------------------------------------------------- the CLI


def train_mask_argv(
    config: Path, model_dir: Path, data_dir: Path, lam: str, mask: Path, model: str = "tiny"
) -> list[str]:
    """`bsn train-mask` as the front-ends call it (bigram target)."""
    return [
        "train-mask", "--config", str(config), "--model", model, "--target", "bigram",
        "--lambda", lam, "--model-dir", str(model_dir),
        "--tokens-train", str(data_dir / "tokens_train.parquet"), "--bigram-stats", str(data_dir),
        "--mask", str(mask), "--mask-log", str(mask.with_suffix(".json")),
        "--mask-curve", str(mask.with_suffix(".curve.csv")),
    ]  # fmt: skip


def test_cli_trains_masks_from_a_pretrained_model(
    tmp_path: Path, data_dirs: tuple[Path, Path], pretrained: Path
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(config_dict()))
    output = tmp_path / "masks" / "lambda-0.safetensors"
    argv = train_mask_argv(config, pretrained, data_dirs[0], "0", output)
    assert main([*argv, "--threads", "2"]) == 0
    mask, meta = load_mask(output)
    assert meta["model"] == "tiny" and meta["lambda"] == "0" and meta["revision"] == "final"
    assert sum(t.numel() for t in mask.values()) == 12 * 2 * 16 * 16
    assert json.loads(output.with_suffix(".json").read_text())["steps"] == meta["steps"]


def test_checkpoint_masks_are_mask_jobs_and_the_checkpoints_stage_scores_them(
    tmp_path: Path, data_dirs: tuple[Path, Path], pretrained: Path
) -> None:
    raw = config_dict()
    raw["lambdas"]["bigram"] = ["0", "1"]
    raw["checkpoints"] = {"models": ["tiny"], "steps": [0, 30], "lambdas": ["0", "1"]}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    root = tmp_path / "masks"
    masks = []
    for key in ("tiny+step-0", "tiny"):  # step 30 is the model's own: the main grid's masks
        for label in ("0", "1"):
            masks.append(root / key / "bigram" / f"lambda-{label}.safetensors")
            assert (
                main(train_mask_argv(config, pretrained, data_dirs[0], label, masks[-1], key)) == 0
            )
    _, meta = load_mask(masks[1])
    assert meta["revision"] == "step-0" and meta["step"] == 0 and meta["lambda"] == "1"

    output = tmp_path / "checkpoints.parquet"
    argv = ["checkpoints", "--config", str(config), "--models", str(pretrained)]
    argv += [
        "--masks",
        *map(str, masks),
        "--tokens-eval",
        str(data_dirs[0] / "tokens_eval.parquet"),
    ]
    argv += ["--bigram-stats", str(data_dirs[0]), "--checkpoints", str(output)]
    argv += ["--checkpoint-replicates", str(tmp_path / "checkpoints_replicates.parquet")]
    assert main(argv) == 0
    rows = pq.read_table(output).to_pylist()
    # The full model and the empty mask are scored at every saved checkpoint, the masks at theirs.
    saved = {int(d.name.removeprefix("step-")) for d in pretrained.glob("step-*")} | {30}
    assert {0, 30} < saved and {r["step"] for r in rows} == saved
    scored = {(r["step"], r["target"], r["lambda"]) for r in rows if r["metric"] == "bigram_r"}
    references = {(s, "reference", label) for s in saved for label in ("neginf", "inf")}
    masks = {(s, "bigram", label) for s in (0, 30) for label in ("0", "1")}
    assert scored == references | masks
    shares = [r for r in rows if r["metric"] == "first_mlp_share" and r["target"] == "bigram"]
    assert len(shares) == 4 and all(0 <= r["value"] <= 1 or np.isnan(r["value"]) for r in shares)
    fits = [r for r in rows if r["metric"] == "r_at_budget"]
    assert {r["budget"] for r in fits} <= {10_000, 100_000}


def test_cli_refuses_a_bad_lambda_label(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(config_dict()))
    with pytest.raises(SystemExit):
        main(train_mask_argv(config, Path("m"), Path("d"), "-1", Path("o.safetensors")))
    assert "λ label '-1' is not canonical" in capsys.readouterr().err


# ----------------------------------------------------------------------- bsn mask commands


@pytest.fixture(scope="module")
def trained_mask(
    tmp_path_factory: pytest.TempPathFactory, data_dirs: tuple[Path, Path], pretrained: Path
) -> Path:
    root = tmp_path_factory.mktemp("mask")
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump(config_dict()))
    output = root / "lambda-0.safetensors"
    assert main(train_mask_argv(config, pretrained, data_dirs[0], "0", output)) == 0
    return output


def test_mask_info_prints_counts_metadata_and_blocks(
    trained_mask: Path, pretrained: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["mask", "info", str(trained_mask), "--blocks", str(pretrained)]) == 0
    out = capsys.readouterr().out
    _, meta = load_mask(trained_mask)
    assert f"kept {meta['kept']:,} of {meta['total']:,}" in out
    assert "target: bigram" in out
    block_lines = [line for line in out.splitlines() if line.split()[1:2] in (["Q"], ["MLP-out"])]
    assert len(block_lines) == 4  # Q and MLP-out of 2 layers


def test_mask_algebra_commands_write_the_expected_masks(trained_mask: Path, tmp_path: Path) -> None:
    mask, _ = load_mask(trained_mask)
    complement, union, meet = (tmp_path / f"{n}.safetensors" for n in ("c", "u", "i"))
    assert main(["mask", "complement", str(trained_mask), "--output", str(complement)]) == 0
    assert main(["mask", "union", str(trained_mask), str(complement), "--output", str(union)]) == 0
    assert (
        main(["mask", "intersect", str(trained_mask), str(complement), "--output", str(meet)]) == 0
    )
    flipped, meta = load_mask(complement)
    assert all(torch.equal(flipped[n], ~mask[n]) for n in mask)
    assert meta["operation"] == "complement" and meta["sources"] == [str(trained_mask)]
    assert load_mask(union)[1]["kept"] == meta["total"]
    assert load_mask(meet)[1]["kept"] == 0


def test_mask_random_and_edit_commands(
    trained_mask: Path, pretrained: Path, tmp_path: Path
) -> None:
    from bigram_subnetworks.masks.toolkit import block_counts
    from bigram_subnetworks.models.layout import layout_of

    layout = layout_of(load_pretrained_dir(pretrained / "final"))
    mask, _ = load_mask(trained_mask)
    drawn = tmp_path / "random.safetensors"
    argv = ["mask", "random", str(trained_mask), "--model-dir", str(pretrained), "--seed", "3"]
    assert main([*argv, "--output", str(drawn)]) == 0
    random_mask, meta = load_mask(drawn)
    assert meta["seed"] == 3
    counts = [(r["kept"], r["size"]) for r in block_counts(random_mask, layout)]
    assert counts == [(r["kept"], r["size"]) for r in block_counts(mask, layout)]

    edited = tmp_path / "edited.safetensors"
    argv = ["mask", "edit", str(trained_mask), "--model-dir", str(pretrained), "--drop"]
    assert main([*argv, "--head", "1:0", "--output", str(edited)]) == 0
    result, meta = load_mask(edited)
    for block in layout.head_blocks(1, 0):
        assert not block.select(result[block.param]).any()
    assert meta["operation"] == "drop head 1:0"


def test_mask_generate_is_deterministic_and_masks_change_it(
    trained_mask: Path, pretrained: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["mask", "generate", "--model-dir", str(pretrained), "--prompt", "We the people"]
    outputs = []
    for extra in ([], [], ["--mask", str(trained_mask)]):
        assert main([*argv, "--max-new-tokens", "8", *extra]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].startswith("We the people")
    assert outputs[2].startswith("We the people")


def test_mask_edit_refuses_a_malformed_head(
    trained_mask: Path, pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["mask", "edit", str(trained_mask), "--model-dir", str(pretrained), "--keep"]
    assert main([*argv, "--head", "1", "--output", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.strip() == (
        "bsn mask edit: error: --head '1': expected LAYER:HEAD, e.g. 0:3"
    )
    assert not (tmp_path / "x").exists()


def in_process(argv: list[str]) -> None:
    """`bsn argv` in this process (no second start-up of torch and transformers), the thread
    count it sets restored after."""
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)


def kill_once_written(command: list[str], path: Path) -> None:
    """Start `command`, SIGKILL it as soon as `path` exists (failing if it ends first)."""
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists() and process.poll() is None, f"the job ended before writing {path}"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@pytest.mark.slow
def test_a_killed_train_mask_job_resumes_to_the_same_mask(
    tmp_path: Path, data_dirs: tuple[Path, Path], pretrained: Path
) -> None:
    """SIGKILL a real `bsn train-mask` process after it saved a state; the rerun resumes from it
    and ends with the same mask file as an uninterrupted run (made in this process)."""
    settings = {"max_steps": 400, "save_every": 20, "stop_fraction": 1e-9, "batch_size": 4}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(config_dict() | {"masks": config_dict()["masks"] | settings}))

    def argv(output: Path) -> list[str]:
        return [*train_mask_argv(config, pretrained, data_dirs[0], "1", output), "--threads", "1"]

    def command(output: Path) -> list[str]:
        return [sys.executable, "-m", "bigram_subnetworks", *argv(output)]

    reference = tmp_path / "reference.safetensors"
    in_process(argv(reference))

    killed = tmp_path / "killed.safetensors"
    state = tmp_path / ".killed.safetensors.state" / "state.json"
    kill_once_written(command(killed), state)
    saved_step = json.loads(state.read_text())["step"]
    assert not killed.exists() and 0 < saved_step < 400

    result = subprocess.run(command(killed), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resuming attempt 1 at step {saved_step}" in result.stderr
    assert killed.read_bytes() == reference.read_bytes()
    assert not state.parent.exists()


@pytest.mark.slow
def test_a_killed_pretrain_job_restarts_to_the_same_model(
    tmp_path: Path, data_dirs: tuple[Path, Path]
) -> None:
    """SIGKILL a real `bsn pretrain` process mid-way (checkpoints already staged); nothing is
    left where the stage's output goes, and the rerun writes the same weights as an
    uninterrupted run, made in this process (pretraining restarts from step 0: these models
    train in minutes)."""
    steps = 600
    model = MODEL | {"pretrain": MODEL["pretrain"] | {"steps": steps, "checkpoints": 8}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(config_dict(tiny=model)))

    def argv(output: Path) -> list[str]:
        data = data_dirs[0]
        return [
            "pretrain", "--config", str(config),
            "--model", "tiny", "--tokens-train", str(data / "tokens_train.parquet"),
            "--tokens-eval", str(data / "tokens_eval.parquet"), "--bigram-stats", str(data),
            "--tokenizer", str(data_dirs[1]), "--model-dir", str(output), "--threads", "1",
        ]  # fmt: skip

    def command(output: Path) -> list[str]:
        return [sys.executable, "-m", "bigram_subnetworks", *argv(output)]

    reference = tmp_path / "reference" / "tiny"
    in_process(argv(reference))

    killed = tmp_path / "killed" / "tiny"
    # Kill it once the last checkpoint before the end is staged.
    staged = killed.with_name(".tiny.tmp") / f"step-{checkpoint_steps(steps, 8)[-2]}"
    kill_once_written(command(killed), staged)
    assert not killed.exists()  # a later stage finds no model, not a partial one

    subprocess.run(command(killed), check=True, capture_output=True, timeout=300)
    assert not killed.with_name(".tiny.tmp").exists()
    weights = sorted(p.relative_to(reference) for p in reference.rglob("*.safetensors"))
    assert len(weights) == 9  # final + 8 checkpoints
    for path in weights:
        assert (killed / path).read_bytes() == (reference / path).read_bytes(), path
    assert pq.read_table(killed / "train_log.parquet") == pq.read_table(
        reference / "train_log.parquet"
    )
