"""The `bsn` command line: one subcommand per workflow stage, with explicit input/output paths.

Snakemake rules and DVC stages are thin wrappers around these commands, so every stage can be run
and tested on its own. Every command validates the whole config before doing any work.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import sys
import time
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


def _setup_logging(stage: str, log_file: Path | None) -> None:
    formatter = logging.Formatter(f"%(asctime)s [{stage}] %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w", encoding="utf-8"))
    root = logging.getLogger("bigram_subnetworks")
    root.handlers.clear()
    root.setLevel(logging.INFO)
    root.propagate = False
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)


# ------------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace, cfg: Config) -> None:
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


def cmd_dvc(args: argparse.Namespace, cfg: Config) -> None:
    from bigram_subnetworks.frontends import dvc_yaml

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
    print(f"{args.output}: {len(text.splitlines())} lines for {args.config}; now run `dvc repro`")


def run_stage(stage: Stage, args: argparse.Namespace, cfg: Config) -> None:
    """Run one registry stage: its function gets the config, restricted to the keys the stage
    declares, and one keyword per wildcard, input and output."""
    from bigram_subnetworks.config import restrict
    from bigram_subnetworks.stages import job_fields, key_parts

    wildcards = {name: getattr(args, name) for name in stage.wildcards}
    fields = job_fields(cfg, wildcards) if stage.name != "config" else {}
    view = restrict(cfg, [key_parts(key, fields) for key in stage.reads], stage.name)
    if stage.torch:
        from bigram_subnetworks.models.loading import tune_cpu

        tune_cpu(args.threads)
    module, function = stage.run.split(":")
    paths = {name: getattr(args, name) for name in {**stage.inputs, **stage.outputs}}
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
            type=_lambda_label if name == "lam" else str,
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
    parser.add_argument("--log", type=Path, help="Also write the log to this file.")
    if stage.torch:
        parser.add_argument(
            "--threads", type=int, default=None, help="Torch threads (default: all cores)."
        )
    parser.set_defaults(func=functools.partial(run_stage, stage), needs_config=True)


WILDCARD_HELP = {
    "model": "Model key: a model name of the config, or name+step-<N> / name+random-body.",
    "target": "Mask target: bigram or full.",
    "lam": "λ label: 0, 1, 1e1, 5e2, inf, neginf (quoted in YAML).",
}


def build_parser() -> argparse.ArgumentParser:
    from bigram_subnetworks.stages import STAGES

    parser = argparse.ArgumentParser(
        prog="bsn", description="Bigram subnetworks workflow: run one stage."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="Validate a config file and exit.")
    p.add_argument("--config", type=Path, required=True, help="Run config (YAML).")
    p.add_argument("--log", type=Path, help="Also write the log to this file.")
    p.set_defaults(func=cmd_validate, needs_config=True)

    schema = sub.add_parser("schema", help="Write (or check) the config JSON schema.")
    schema.add_argument("--output", type=Path, default=Path("config/schema.json"))
    schema.add_argument("--check", action="store_true", help="Fail if the file is out of date.")
    schema.set_defaults(func=cmd_schema, needs_config=False)

    dvc = sub.add_parser(
        "dvc",
        help="Write dvc.yaml for a config (from the stage registry).",
        description="Write dvc.yaml for a config: every stage of the registry, with exactly the "
        "config keys each one reads as DVC params. Then run `dvc repro`.",
    )
    dvc.add_argument("--config", type=Path, required=True, help="Run config (YAML).")
    dvc.add_argument("--output", type=Path, default=Path("dvc.yaml"), help="Default: dvc.yaml.")
    dvc.add_argument("--check", action="store_true", help="Fail if the file is out of date.")
    dvc.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    dvc.set_defaults(func=cmd_dvc, needs_config=True)

    for stage in STAGES.values():
        _add_stage(sub, stage)
    add_mask_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    expected_errors = (UserError, OSError)
    try:
        if not args.needs_config:
            args.func(args)
            return 0
        cfg = load_config(args.config)
        _setup_logging(args.command, args.log)
        started = time.perf_counter()
        args.func(args, cfg)
        if args.command != "validate":
            log.info("done in %.1f s", time.perf_counter() - started)
    except expected_errors as exc:
        message = str(exc) or type(exc).__name__
        print(
            "\n".join(f"bsn {args.command}: error: {line}" for line in message.splitlines()),
            file=sys.stderr,
        )
        log.debug("failure details", exc_info=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
