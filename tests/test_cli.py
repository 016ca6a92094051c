"""The `bsn` stages run in-process on the smoke config and stay light to import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bigram_subnetworks.cli import main

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


def test_stages_chain_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, SECRET)
    config = str(ROOT / "config" / "smoke.yaml")
    corpus, tok, data = Path("data/c"), Path("data/tokenizers/t"), Path("data/c__t")
    assert main(["corpus", "--config", config, "--output-dir", str(corpus)]) == 0
    documents = str(corpus / "documents.parquet")
    assert main(["tokenizer", "--config", config, "--documents", documents,
                 "--output-dir", str(tok)]) == 0  # fmt: skip
    assert main(["tokenize", "--config", config, "--documents", documents,
                 "--tokenizer", str(tok), "--output-dir", str(data)]) == 0  # fmt: skip
    log = data / "logs" / "bigram_stats.log"
    assert main(["bigram-stats", "--config", config, "--tokens",
                 str(data / "tokens_train.parquet"), "--output-dir", str(data),
                 "--log", str(log)]) == 0  # fmt: skip
    produced = sorted(p.relative_to("data").as_posix() for p in Path("data").rglob("*.*"))
    assert produced == [
        "c/documents.parquet",
        "c/manifest.json",
        "c__t/bigrams.json",
        "c__t/bigrams.parquet",
        "c__t/logs/bigram_stats.log",
        "c__t/tokens.json",
        "c__t/tokens_eval.parquet",
        "c__t/tokens_train.parquet",
        "c__t/unigrams.parquet",
        "tokenizers/t/meta.json",
        "tokenizers/t/tokenizer.json",
    ]
    assert "bigrams:" in log.read_text()
    # Secrets in the environment never reach logs, artifacts or the terminal.
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err
    for path in Path("data").rglob("*.*"):
        assert SECRET.encode() not in path.read_bytes(), path


def test_missing_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(ROOT / "config" / "smoke.yaml")
    missing = tmp_path / "nope" / "tokens_train.parquet"
    code = main(["bigram-stats", "--config", config, "--tokens", str(missing),
                 "--output-dir", str(tmp_path / "out")])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bsn bigram-stats: error: ")
    assert "nope" in err[-1]
    assert not (tmp_path / "out" / "bigrams.parquet").exists()
