"""Mistakes that would surface hours later are refused before any work, in one line each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bigram_subnetworks.cli import main
from bigram_subnetworks.config import ConfigError, validate_config
from bigram_subnetworks.validation import check, problems
from hub_cache import add_revision

ROOT = Path(__file__).resolve().parents[1]


def raw_default() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def with_hub_model(raw: dict[str, Any], cache: Path, **spec: Any) -> dict[str, Any]:
    raw |= {"hub_cache": str(cache)}
    raw["models"] = {"m": {"source": "huggingface", "id": "org/m", **spec}}
    raw["tokenizer"] = {"name": "m", "source": "pretrained", "model": "org/m"}
    raw["checkpoints"] = None
    return raw


def test_selection_needs_lambda_zero_in_the_bigram_grid() -> None:
    raw = raw_default()
    raw["lambdas"]["bigram"] = ["1e1", "1e2"]
    raw["checkpoints"] = None
    with pytest.raises(ConfigError, match=r"lambdas\.bigram: add '0': λ selection compares"):
        validate_config(raw, "c.yaml")


@pytest.mark.parametrize(("value", "label"), [(10, "1e1"), (0, "0"), (500, "5e2"), (5, "5")])
def test_a_lambda_yaml_turned_into_a_number_says_how_to_quote_it(value: Any, label: str) -> None:
    raw = raw_default()
    raw["lambdas"]["full"] = ["1", value]
    with pytest.raises(ConfigError) as error:
        validate_config(raw, "c.yaml")
    assert str(error.value) == f"c.yaml: lambdas.full.1: λ labels are strings: quote it: '{label}'"


def test_a_trained_tokenizer_with_a_hub_model_is_refused(tmp_path: Path) -> None:
    raw = with_hub_model(raw_default(), tmp_path)
    raw["tokenizer"] = raw_default()["tokenizer"]
    with pytest.raises(ConfigError, match="a tokenizer trained here does not match the vocab"):
        validate_config(raw, "c.yaml")


def test_local_paths_must_exist(tmp_path: Path) -> None:
    raw = raw_default()
    raw["corpus"] = {"name": "mine", "source": "local", "path": str(tmp_path / "nope")}
    raw["models"]["local"] = {"source": "local", "path": str(tmp_path / "none")}
    raw["tokenizer"] = {"name": "t", "source": "pretrained", "model": str(tmp_path / "tok")}
    del raw["models"]["neox-2x48"], raw["models"]["neox-2x80"], raw["models"]["neox-4x96"]
    raw["checkpoints"] = None
    found = problems(validate_config(raw))
    assert found == [
        f"corpus.path: {tmp_path / 'nope'} is not a folder; give the folder of your texts",
        f"tokenizer.model: {tmp_path / 'tok'} is neither a local folder nor a Hub id (org/name); "
        "fix the path or the id",
        f"models.local.path: {tmp_path / 'none'} holds no config.json; give a folder written by "
        "save_pretrained",
    ]


def test_an_unsupported_architecture_in_the_cache_is_refused(tmp_path: Path) -> None:
    config = {"model_type": "mamba", "vocab_size": 100}
    add_revision(tmp_path, "org/m", "main", {"config.json": json.dumps(config).encode()})
    cfg = validate_config(with_hub_model(raw_default(), tmp_path))
    with pytest.raises(ConfigError) as error:
        check(cfg, "c.yaml")
    message = str(error.value)
    assert message.startswith("c.yaml: models.m: ") and "\n" not in message
    assert "mamba" in message and "GPT-NeoX" in message and "Llama" in message


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path: Path, small_bpe: Any) -> None:
    config = {"model_type": "gpt_neox", "vocab_size": 100}
    files = {
        "config.json": json.dumps(config).encode(),
        "tokenizer.json": small_bpe.to_str().encode(),
    }
    add_revision(tmp_path, "org/m", "main", files)
    cfg = validate_config(with_hub_model(raw_default(), tmp_path))
    assert problems(cfg) == [
        f"models.m: the tokenizer has {small_bpe.get_vocab_size()} tokens but the model embeds "
        "only 100; use the model's own tokenizer (tokenizer.model)"
    ]
    config["vocab_size"] = 50304  # Pythia pads its embedding: more rows than tokens is fine
    add_revision(tmp_path, "org/m", "main", {"config.json": json.dumps(config).encode()})
    assert problems(cfg) == []


def test_bsn_validate_runs_the_deep_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = raw_default()
    raw["corpus"] = {"name": "mine", "source": "local", "path": str(tmp_path / "nope")}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", "--config", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    expected = f"corpus.path: {tmp_path / 'nope'} is not a folder; give the folder of your texts"
    assert err == f"bsn validate: error: {path}: {expected}"


# ---------------------------------------------------------------------------------- bsn init


@pytest.mark.parametrize("preset", ["paper", "cpu"])
def test_bsn_init_writes_a_config_that_validates_and_plans(
    tmp_path: Path, preset: str, tiny_model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bigram_subnetworks.config import load_config
    from bigram_subnetworks.frontends import rule_specs

    monkeypatch.chdir(tmp_path)
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("Some text. " * 50)
    for model, corpus in [
        ("EleutherAI/pythia-160m", "sotu"),
        (str(tiny_model_dirs["gpt2"]), str(texts)),
    ]:
        output = tmp_path / f"{preset}-{len(corpus)}.yaml"
        argv = ["init", "--model", model, "--corpus", corpus, "--preset", preset]
        assert main([*argv, "--output", str(output)]) == 0
        text = output.read_text()
        assert text.startswith("# yaml-language-server: $schema=config/schema.json")
        cfg = load_config(output)
        assert cfg.tokenizer.source == "pretrained" and len(cfg.models) == 1
        assert "0" in cfg.lambdas.bigram
        names = {spec.name for spec in rule_specs(cfg)}
        assert {"fetch", "train_mask", "evaluate", "report"} <= names
        assert main([*argv, "--output", str(output)]) == 1  # never over an existing file
    if preset == "paper":
        assert cfg.masks.lr == 5e-5 and cfg.masks.temp_increase == 1.001
