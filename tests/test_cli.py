"""The `bsn` stages run in-process on the smoke config and stay light to import."""

from __future__ import annotations

import argparse
import importlib
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bigram_subnetworks.cli import all_parsers, build_parser, main
from bigram_subnetworks.config import Config, load_config
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.stages import STAGES, arguments, data_keys, job_fields

ROOT = Path(__file__).resolve().parents[1]


def test_data_stages_do_not_import_torch_or_transformers() -> None:
    """Every data stage of the registry (ngram_stats among them) and the CLI."""
    code = (
        "import importlib, sys\n"
        "import bigram_subnetworks.cli\n"
        "from bigram_subnetworks.stages import STAGES\n"
        "modules = {s.run.split(':')[0] for s in STAGES.values()}\n"
        "data = sorted(m for m in modules if m.startswith('bigram_subnetworks.data.'))\n"
        "assert len(data) >= 5, data\n"
        "for module in data:\n"
        "    importlib.import_module(module)\n"
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


def test_the_executable_returns_mains_status_and_leaves_the_imports_to_the_os() -> None:
    """`bsn` (console_main) exits with main's status, its objects moved out of the collector's
    reach first (what the interpreter's shutdown would otherwise traverse once more)."""
    code = (
        "import gc, sys\n"
        "import torch\n"
        "from bigram_subnetworks.cli import console_main\n"
        "sys.argv = ['bsn', 'validate', '--config', sys.argv[1]]\n"
        "status = console_main()\n"
        "print(status, gc.get_freeze_count() > len(gc.get_objects()), flush=True)\n"
        "raise SystemExit(status)\n"
    )
    for config, status in ((ROOT / "config" / "smoke.yaml", 0), (ROOT / "nope.yaml", 1)):
        result = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True,
                                text=True)  # fmt: skip
        assert result.returncode == status, result.stderr[-2000:]
        assert result.stdout.splitlines()[-1] == f"{status} True"


# --------------------------------------------------------------------- logs and help (issue 15)


def fake_stage(monkeypatch: pytest.MonkeyPatch, stage: str, body: Any) -> None:
    """Replace a registry stage's function (what `bsn <stage>` runs) with `body(cfg, **paths)`."""
    module, function = STAGES[stage].run.split(":")
    monkeypatch.setattr(importlib.import_module(module), function, body)


def chatty(cfg: Config, **paths: Any) -> None:
    stage_log = logging.getLogger("bigram_subnetworks.data.bigrams")
    stage_log.debug("a debug detail")
    stage_log.info("step 10/100 loss 1.2345")
    stage_log.warning("a warning")


@pytest.mark.parametrize(
    ("flags", "terminal", "in_file"),
    [
        ([], ["step 10/100", "a warning"], ["step 10/100", "a warning"]),
        (["-q"], ["a warning"], ["step 10/100", "a warning"]),
        (["--quiet"], ["a warning"], ["step 10/100", "a warning"]),
        (["-v"], ["a debug detail", "step 10/100", "a warning"], ["a debug detail", "step 10/100"]),
        (["--verbose"], ["a debug detail", "step 10/100", "a warning"], ["a debug detail"]),
    ],
)
def test_verbose_and_quiet_set_what_the_terminal_and_the_log_file_show(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    terminal: list[str],
    in_file: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    fake_stage(monkeypatch, "bigram_stats", chatty)
    config = str(ROOT / "config" / "smoke.yaml")
    argv = registry_argv("bigram_stats", load_config(config), config)
    assert main([*flags, *argv]) == 0
    err = capsys.readouterr().err
    log_file = Path(argv[argv.index("--log") + 1])
    text = log_file.read_text(encoding="utf-8")
    everything = ["a debug detail", "step 10/100", "a warning"]
    assert [m for m in everything if m in err] == [m for m in everything if m in terminal]
    assert all(m in text for m in in_file)
    assert ("a debug detail" in text) == ("a debug detail" in in_file)
    assert "[bigram-stats] INFO step 10/100 loss 1.2345" in text


def test_verbose_and_quiet_are_global_options_and_exclusive(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["-v", "-q", "validate", "--config", str(ROOT / "config" / "smoke.yaml")])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "-v, --verbose" in text and "-q, --quiet" in text


def out_of_memory(cfg: Config, **paths: Any) -> None:
    logging.getLogger("bigram_subnetworks.data.bigrams").info("step 1/100 loss 9.8765")
    raise RuntimeError(
        "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.1 GiB\n"
        "of which 1.2 GiB is free."
    )


def test_an_unexpected_error_goes_to_the_log_with_its_traceback_and_to_stderr_as_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    fake_stage(monkeypatch, "bigram_stats", out_of_memory)
    config = str(ROOT / "config" / "smoke.yaml")
    argv = registry_argv("bigram_stats", load_config(config), config)
    log_file = argv[argv.index("--log") + 1]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "bsn bigram-stats: unexpected error: RuntimeError: CUDA out of memory. Tried to allocate "
        f"20.00 GiB. GPU 0 has a total capacity of 79.1 GiB (traceback in {log_file})"
    )
    assert not any("Traceback" in line for line in err)
    assert len([line for line in err if "error" in line.lower()]) == 1
    text = Path(log_file).read_text(encoding="utf-8")
    assert "step 1/100 loss 9.8765" in text
    assert "ERROR unexpected error: RuntimeError: CUDA out of memory" in text
    assert "Traceback (most recent call last)" in text and "in out_of_memory" in text
    assert "of which 1.2 GiB is free." in text  # the whole message, in the log


def test_an_unexpected_error_without_a_log_file_prints_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    fake_stage(monkeypatch, "bigram_stats", out_of_memory)
    config = str(ROOT / "config" / "smoke.yaml")
    argv = registry_argv("bigram_stats", load_config(config), config)
    at = argv.index("--log")
    assert main(argv[:at] + argv[at + 2 :]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback (most recent call last):" in err
    assert err[-1].startswith("bsn bigram-stats: unexpected error: RuntimeError: CUDA out of")


def test_an_expected_error_stays_one_line_and_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(cfg: Config, **paths: Any) -> None:
        raise UserError("tokens_train.parquet: missing; run the tokenize stage first")

    monkeypatch.chdir(tmp_path)
    fake_stage(monkeypatch, "bigram_stats", refuse)
    config = str(ROOT / "config" / "smoke.yaml")
    argv = registry_argv("bigram_stats", load_config(config), config)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "bsn bigram-stats: error: tokens_train.parquet: missing; run the tokenize stage first"
    ]
    text = Path(argv[argv.index("--log") + 1]).read_text(encoding="utf-8")
    assert "ERROR tokens_train.parquet: missing" in text


def every_action() -> list[tuple[str, argparse.Action]]:
    """(command, action) for every option and argument of `bsn` and its subcommands."""
    found = []
    for parser in all_parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                continue
            found.append((parser.prog, action))
    return found


def test_every_option_of_every_command_has_help() -> None:
    actions = every_action()
    assert len(actions) > 100  # every stage, the mask commands, the global options
    missing = [
        f"{prog} {'/'.join(a.option_strings) or a.dest}"
        for prog, a in actions
        if a.help is not argparse.SUPPRESS and not (a.help or "").strip()
    ]
    assert missing == []


def test_every_option_with_a_default_shows_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: nothing wraps
    checked = 0
    for parser in all_parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if (
                action.default is None
                or action.default is argparse.SUPPRESS
                or action.help is argparse.SUPPRESS
                or not action.option_strings
                or action.nargs == 0  # flags: off unless given
            ):
                continue
            shown = f"(default: {action.default})" in text
            explicit = "(default:" in (action.help or "")
            assert shown or explicit, (parser.prog, action.option_strings)
            checked += 1
    assert checked >= 5
    with pytest.raises(SystemExit):
        main(["schema", "--help"])
    assert "(default: config/schema.json)" in capsys.readouterr().out


# What a torch job must not import: the report's and the front-ends' libraries. (scipy is not
# listed: transformers imports it with any model class, so it is part of the model's own import.)
UNNEEDED_IN_TORCH_JOBS = (
    "seaborn",
    "matplotlib",
    "pandas",
    "dvc",
    "snakemake",
    "bigram_subnetworks.report",
)


def test_a_torch_job_imports_none_of_the_report_or_front_ends_libraries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pretrain job of the smoke config, run as the front-ends run it, up to its first forward
    pass (it has read its Parquet inputs and built its model by then): pyarrow, which imports
    pandas whenever pandas is installed, runs without it, and nothing else pulls it in."""
    monkeypatch.chdir(tmp_path)
    config = str(ROOT / "config" / "smoke.yaml")
    cfg = load_config(config)
    for stage in ("corpus", "tokenizer", "tokenize", "bigram_stats"):
        assert main(registry_argv(stage, cfg, config)) == 0, stage
    pretrain = STAGES["pretrain"]
    argv = [
        pretrain.command,
        "--config",
        config,
        *arguments(pretrain, cfg, job_fields(cfg, pretrain.jobs(cfg)[0])),
    ]
    code = (
        "import os, sys\n"
        "import torch\n"
        "from bigram_subnetworks.cli import main\n"
        "def first_forward(module, inputs):\n"
        f"    loaded = {{m for m in sys.modules if m.startswith({UNNEEDED_IN_TORCH_JOBS!r})}}\n"
        "    print('at first forward:', sorted(loaded), flush=True)\n"
        "    os._exit(0)\n"
        "torch.nn.modules.module.register_module_forward_pre_hook(first_forward)\n"
        f"main({argv!r})\n"
        "os._exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "at first forward: []"


def test_without_pandas_hides_pandas_from_pyarrow_and_only_inside_the_block() -> None:
    code = (
        "import importlib.util, sys\n"
        "import numpy as np, pyarrow as pa\n"
        "from bigram_subnetworks.io import without_pandas\n"
        "with without_pandas():\n"
        "    table = pa.table({'x': pa.array(np.arange(3))})\n"
        "    assert table.column('x').to_numpy().tolist() == [0, 1, 2]\n"
        "    assert pa.scalar(1).as_py() == 1 and table.to_pylist()[2] == {'x': 2}\n"
        "    assert 'pandas' not in sys.modules, 'pyarrow imported pandas'\n"
        "    assert importlib.util.find_spec('pandas') is not None  # 'is it installed' works\n"
        "    try:\n"
        "        import pandas\n"
        "    except ImportError:\n"
        "        pass\n"
        "    else:\n"
        "        raise AssertionError('pandas imported inside the block')\n"
        "import pandas as pd\n"
        "frame = table.to_pandas()\n"  # pyarrow's pandas integration works again afterwards
        "assert isinstance(frame, pd.DataFrame) and frame['x'].tolist() == [0, 1, 2]\n"
        "categories = pa.Table.from_pandas(pd.DataFrame({'c': pd.Categorical(['a', 'b'])}))\n"
        "assert pa.types.is_dictionary(categories.schema.field('c').type)\n"
        "with without_pandas():\n"  # pandas already imported: the block changes nothing
        "    assert sys.modules['pandas'] is pd\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
