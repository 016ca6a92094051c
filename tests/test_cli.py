"""The `bsn` stages run in-process on the smoke config and stay light to import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bigram_subnetworks.cli import main
from bigram_subnetworks.config import Config, load_config
from bigram_subnetworks.stages import STAGES, arguments, data_keys, job_fields

ROOT = Path(__file__).resolve().parents[1]


def test_data_stages_do_not_import_torch_or_transformers() -> None:
    code = (
        "import sys\n"
        "import bigram_subnetworks.cli\n"
        "import bigram_subnetworks.data.corpus, bigram_subnetworks.data.tokenizer\n"
        "import bigram_subnetworks.data.tokenize, bigram_subnetworks.data.bigrams\n"
        "heavy = {'torch', 'transformers', 'datasets', 'pandas'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


SECRET = "hf_test_secret_that_must_never_be_logged"


def registry_argv(stage: str, cfg: Config, config: str) -> list[str]:
    """The argv the front-ends give `bsn` for a stage without a grid."""
    entry = STAGES[stage]
    return [entry.command, "--config", config, *arguments(entry, cfg, job_fields(cfg, {}))]


def test_stages_chain_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, SECRET)
    config = str(ROOT / "config" / "smoke.yaml")
    cfg = load_config(config)
    for stage in ("corpus", "tokenizer", "tokenize", "bigram_stats"):
        assert main(registry_argv(stage, cfg, config)) == 0, stage
    keys = data_keys(cfg)
    produced = sorted(p.relative_to("data").as_posix() for p in Path("data").rglob("*.*"))
    assert produced == [
        f"{keys['corpus']}/documents.parquet",
        f"{keys['corpus']}/logs/corpus.log",
        f"{keys['corpus']}/manifest.json",
        f"{keys['data']}/bigrams.json",
        f"{keys['data']}/bigrams.parquet",
        f"{keys['data']}/logs/bigram_stats.log",
        f"{keys['data']}/logs/tokenize.log",
        f"{keys['data']}/tokens.json",
        f"{keys['data']}/tokens_eval.parquet",
        f"{keys['data']}/tokens_train.parquet",
        f"{keys['data']}/unigrams.parquet",
        f"tokenizers/{keys['tokenizer']}/logs/tokenizer.log",
        f"tokenizers/{keys['tokenizer']}/meta.json",
        f"tokenizers/{keys['tokenizer']}/tokenizer.json",
    ]
    assert "bigrams:" in (Path("data") / keys["data"] / "logs" / "bigram_stats.log").read_text()
    # Secrets in the environment never reach logs, artifacts or the terminal.
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err
    for path in Path("data").rglob("*.*"):
        assert SECRET.encode() not in path.read_bytes(), path


def test_every_stage_help_names_what_it_reads_and_writes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for stage in STAGES.values():
        with pytest.raises(SystemExit):
            main([stage.command, "--help"])
        text = capsys.readouterr().out
        for port in {**stage.inputs, **stage.outputs}.values():
            assert port.artifact.path in text, (stage.name, port.artifact.path)
        assert "config keys:" in text


def test_missing_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(ROOT / "config" / "smoke.yaml")
    missing = tmp_path / "nope" / "tokens_train.parquet"
    code = main(["bigram-stats", "--config", config, "--tokens-train", str(missing),
                 "--tokens-meta", str(missing.with_name("tokens.json")),
                 "--bigram-stats", str(tmp_path / "out")])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bsn bigram-stats: error: ")
    assert "nope" in err[-1]
    assert not (tmp_path / "out" / "bigrams.parquet").exists()
