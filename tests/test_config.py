"""The config is validated before any work, with one line per problem naming field, value, fix."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from bigram_subnetworks.cli import main
from bigram_subnetworks.config import (
    ConfigError,
    LocalCorpus,
    PretrainedTokenizer,
    json_schema_text,
    load_config,
    validate_config,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [ROOT / "params.yaml", *sorted((ROOT / "config").glob("*.yaml"))]


def default() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.run


def test_default_is_the_embedded_default() -> None:
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.run == "default"
    assert cfg.corpus.source == "sotu"
    assert cfg.tokenizer.source == "train" and cfg.tokenizer.vocab_size == 4096
    assert cfg.data.seq_len == 64  # the paper's 128 halved to fit the CPU budget
    masked = sorted(12 * m.layers * m.d_model**2 for m in cfg.models.values())
    assert len(masked) >= 3 and all(m.layers >= 2 for m in cfg.models.values())
    assert masked[-1] >= 8 * masked[0]
    assert cfg.lambdas is not None and "0" in cfg.lambdas.bigram
    assert load_config(ROOT / "config" / "smoke.yaml").run == "smoke"


def test_schema_file_is_fresh() -> None:
    assert (ROOT / "config" / "schema.json").read_text() == json_schema_text(), (
        "config/schema.json is stale: run `bsn schema`"
    )


def mutate(path: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(default())
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[last] = value
    return raw


def drop(path: str) -> dict[str, Any]:
    raw = copy.deepcopy(default())
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    del node[last]
    return raw


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (mutate("seed", "not-a-number"), "seed: expected an integer, got 'not-a-number'"),
        (mutate("seed", -1), "seed: expected greater than or equal to 0, got -1"),
        (mutate("seed", 1.5), "seed: expected an integer, got 1.5"),
        (mutate("run", "bad name"), "run: expected a name of letters, digits, '.', '_' or '-'"),
        (drop("run"), "run: required key is missing"),
        (
            mutate("corpus.source", "sotuu"),
            "corpus.source: expected one of 'sotu', 'local', 'huggingface', got 'sotuu'",
        ),
        (mutate("corpus.eval_fraction", 1.5), "corpus.eval_fraction: expected less than 1"),
        (mutate("corpus.eval_fraction", "much"), "corpus.eval_fraction: expected a number"),
        (mutate("corpus.eval_fraction", float("nan")), "corpus.eval_fraction: expected a number"),
        (mutate("corpus.split", "by_month"), "corpus.split: expected one of 'random' or 'by_year'"),
        (mutate("corpus.splitt", "random"), "corpus.splitt: unknown key; did you mean 'split'?"),
        (mutate("sed", 0), "sed: unknown key; did you mean 'seed'?"),
        (mutate("tokenizer.vocab_size", 12), "tokenizer.vocab_size: expected greater than"),
        (mutate("tokenizer.source", "bpe"), "tokenizer.source: expected one of 'train'"),
        (drop("tokenizer.source"), "tokenizer.source: required key is missing"),
        (mutate("data.seq_len", 1), "data.seq_len: expected greater than or equal to 2"),
        (mutate("data.max_train_sequences", 0), "data.max_train_sequences: expected greater"),
        (mutate("corpus.strip_editorial_notes", "yes"), "expected true or false, got 'yes'"),
        (mutate("corpus.name", "a__b"), "must not contain '__'"),
        (mutate("checkpoints.models", ["nope"]), "checkpoints.models: 'nope' is not one of"),
        (mutate("checkpoints.steps", [0, 300]), "saves no checkpoint at step(s) [300]; it saves"),
        (mutate("checkpoints.steps", [0, 0]), "each step may appear once"),
        (mutate("checkpoints.steps", [292]), "include step 0 in steps and '0' in lambdas"),
        (mutate("checkpoints.lambdas", ["0", "inf"]), "use finite λ labels"),
        (mutate("checkpoints.budgets", [0]), "checkpoints.budgets.0: expected greater than 0"),
        (
            mutate("models.neox-2x48.source", "hub"),
            "models.neox-2x48.source: expected one of 'embedded', 'huggingface', 'local'",
        ),
        (mutate("lambdas.bigram", ["0", "-1"]), "λ label '-1' is not canonical"),
        (mutate("lambdas.full", ["nan"]), "λ label 'nan' is not canonical"),
    ],
)
def test_invalid_values_give_one_line_naming_field_and_value(
    raw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        validate_config(raw, source="params.yaml")
    text = str(error.value)
    assert len(text.splitlines()) == 1, text
    assert text.startswith("params.yaml: ")
    assert message in text


def test_checkpoint_models_must_have_checkpoints() -> None:
    raw = default()
    raw["models"]["mine"] = {"source": "local", "path": "somewhere"}
    raw["tokenizer"] = {"name": "p", "source": "pretrained", "model": "somewhere"}
    raw["checkpoints"]["models"] = ["mine"]
    with pytest.raises(ConfigError, match="'mine' is a local model, which has no checkpoints"):
        validate_config(raw)
    raw["models"] = {"mine": {"source": "huggingface", "id": "EleutherAI/pythia-160m"}}
    cfg = validate_config(raw)  # Hub checkpoints are revisions, known only to the Hub
    assert cfg.models["mine"].checkpoint_revision == "step{step}"
    raw["models"]["mine"]["checkpoint_revision"] = "main"
    with pytest.raises(ConfigError, match=r"checkpoint_revision: must contain '\{step\}'"):
        validate_config(raw)


def test_several_problems_give_one_line_each() -> None:
    raw = mutate("seed", "x")
    raw["corpus"]["eval_fraction"] = 2.0
    with pytest.raises(ConfigError) as error:
        validate_config(raw, source="c.yaml")
    lines = str(error.value).splitlines()
    assert len(lines) == 2
    assert all(line.startswith("c.yaml: ") for line in lines)


def test_local_source_needs_its_path_and_rejects_other_sources_keys() -> None:
    raw = mutate("corpus", {"name": "mine", "source": "local"})
    with pytest.raises(ConfigError, match=r"corpus\.path: required key is missing"):
        validate_config(raw)
    raw = mutate("corpus", {"name": "mine", "source": "local", "path": "x", "split": "by_year"})
    with pytest.raises(ConfigError, match=r"corpus\.split: unknown key"):
        validate_config(raw)
    raw = mutate("corpus", {"name": "mine", "source": "local", "path": "texts"})
    cfg = validate_config(raw)
    assert isinstance(cfg.corpus, LocalCorpus)
    assert cfg.corpus.encoding_errors == "strict"


def test_numbers_written_as_yaml_strings_are_read() -> None:
    # PyYAML reads 5e-2 as a string (YAML 1.1 needs a dot); accept it as the number it is.
    raw = yaml.safe_load("x: 5e-2")
    assert raw["x"] == "5e-2"
    cfg = validate_config(mutate("corpus.eval_fraction", raw["x"]))
    assert cfg.corpus.eval_fraction == pytest.approx(0.05)


def test_pretrained_tokenizer_config() -> None:
    raw = mutate(
        "tokenizer", {"name": "pythia", "source": "pretrained", "model": "EleutherAI/pythia-70m"}
    )
    cfg = validate_config(raw)
    assert isinstance(cfg.tokenizer, PretrainedTokenizer)
    assert cfg.tokenizer.model == "EleutherAI/pythia-70m"


def test_config_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)
    path.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_reports_config_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(mutate("seed", "not-a-number")))
    out = tmp_path / "out"
    argv = ["--documents", str(out / "d.parquet"), "--manifest", str(out / "m.json")]
    assert main(["corpus", "--config", str(path), *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"bsn corpus: error: {path}: seed: expected an integer, got 'not-a-number'"
    assert not (tmp_path / "out").exists()


def test_cli_schema_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "schema.json"
    assert main(["schema", "--output", str(target), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["schema", "--output", str(target)]) == 0
    assert main(["schema", "--output", str(target), "--check"]) == 0


def test_config_values_are_data_never_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Strings that look like code or templates stay literal text; nothing is evaluated."""
    monkeypatch.chdir(tmp_path)
    raw = default()
    payload = "__import__('pathlib').Path('pwned').touch() ${HOME} {{ 7 * 7 }}"
    raw["analysis"]["prompts"] = [payload]
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(raw) + "extra: !!python/object/apply:os.system ['touch pwned']\n"
    )
    with pytest.raises(ConfigError, match=r"c\.yaml: not valid YAML"):
        load_config(config)  # YAML tags that construct objects are refused by the safe loader
    config.write_text(yaml.safe_dump(raw))
    assert load_config(config).analysis.prompts == [payload]
    assert not (tmp_path / "pwned").exists()
