"""The `bsn` command line: one subcommand per workflow stage, with explicit input/output paths.

Snakemake rules and DVC stages are thin wrappers around these commands, so every stage can be run
and tested on its own. Every command validates the whole config before doing any work.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
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


def cmd_schema(args: argparse.Namespace) -> None:
    text = json_schema_text()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            raise ConfigError(
                f"{args.output}: out of date; run `bsn schema --output {args.output}`"
            )
        return
    from bigram_subnetworks.io import atomic_outputs

    with atomic_outputs(args.output) as (temp,):
        temp.write_text(text, encoding="utf-8")


def cmd_corpus(args: argparse.Namespace, cfg: Config) -> None:
    from bigram_subnetworks.data.corpus import build_corpus

    build_corpus(cfg.corpus, cfg.seed, args.output_dir)


def cmd_tokenizer(args: argparse.Namespace, cfg: Config) -> None:
    from bigram_subnetworks.data.tokenizer import build_tokenizer

    build_tokenizer(cfg.tokenizer, args.documents, args.output_dir)


def cmd_tokenize(args: argparse.Namespace, cfg: Config) -> None:
    from bigram_subnetworks.data.tokenize import tokenize_corpus
    from bigram_subnetworks.data.tokenizer import TOKENIZER_FILE, load_tokenizer

    loaded = load_tokenizer(args.tokenizer)
    tokenize_corpus(
        args.documents,
        loaded,
        cfg.data,
        cfg.seed,
        args.output_dir,
        tokenizer_path=args.tokenizer / TOKENIZER_FILE,
    )


def cmd_bigram_stats(args: argparse.Namespace, cfg: Config) -> None:
    from bigram_subnetworks.data.bigrams import build_bigram_stats

    build_bigram_stats(args.tokens, args.output_dir)


def cmd_pretrain(args: argparse.Namespace, cfg: Config) -> None:
    from bigram_subnetworks.models.loading import tune_cpu
    from bigram_subnetworks.models.pretrain import prepare_model

    tune_cpu(args.threads)
    prepare_model(args.model, cfg, args.data_dir, args.tokenizer, args.output_dir)


def cmd_train_mask(args: argparse.Namespace, cfg: Config) -> None:
    from bigram_subnetworks.data.bigrams import read_bigram_counts
    from bigram_subnetworks.data.tokenize import read_sequences
    from bigram_subnetworks.masks.train import MaskRun, train_mask
    from bigram_subnetworks.models.loading import load_model, model_identity, pick_device, tune_cpu

    tune_cpu(args.threads)
    model, info = load_model(args.model_dir, trust_remote_code=_trusts_remote_code(cfg, args))
    run = MaskRun(
        target=args.target,
        lambda_label=args.lam,
        settings=cfg.masks,
        seed=cfg.seed,
        model_info=model_identity(args.model_dir, info),
    )
    counts = read_bigram_counts(args.data_dir)
    sequences = read_sequences(args.data_dir / "tokens_train.parquet")
    train_mask(model, run, sequences, counts, args.output, pick_device(cfg.device))


def cmd_evaluate(args: argparse.Namespace, cfg: Config) -> None:
    from bigram_subnetworks.analysis.evaluate import run_evaluation
    from bigram_subnetworks.models.loading import tune_cpu

    tune_cpu(args.threads)
    run_evaluation(cfg, args.models_dir, args.masks_dir, args.data_dir, args.output_dir)


def cmd_select(args: argparse.Namespace, cfg: Config) -> None:
    from bigram_subnetworks.analysis.select import run_selection

    run_selection(args.metrics, list(cfg.models), cfg.analysis.selection_tolerance, args.output)


def cmd_overlap(args: argparse.Namespace, cfg: Config) -> None:
    from bigram_subnetworks.analysis.overlap import run_overlap

    run_overlap(cfg, args.models_dir, args.masks_dir, args.selection, args.output_dir)


def cmd_ablate(args: argparse.Namespace, cfg: Config) -> None:
    from bigram_subnetworks.analysis.ablate import run_ablation
    from bigram_subnetworks.models.loading import tune_cpu

    tune_cpu(args.threads)
    run_ablation(
        cfg,
        args.models_dir,
        args.masks_dir,
        args.selection,
        args.data_dir,
        args.tokenizer,
        args.output_dir,
    )


def cmd_residual(args: argparse.Namespace, cfg: Config) -> None:
    from bigram_subnetworks.analysis.residual import run_residual
    from bigram_subnetworks.models.loading import tune_cpu

    tune_cpu(args.threads)
    run_residual(cfg, args.models_dir, args.masks_dir, args.selection, args.data_dir, args.output)


def cmd_checkpoint_masks(args: argparse.Namespace, cfg: Config) -> None:
    from bigram_subnetworks.analysis.checkpoints import train_checkpoint_masks
    from bigram_subnetworks.models.loading import tune_cpu

    tune_cpu(args.threads)
    train_checkpoint_masks(
        cfg, args.model, args.model_dir, args.step, args.data_dir, args.output_dir
    )


def cmd_checkpoints(args: argparse.Namespace, cfg: Config) -> None:
    from bigram_subnetworks.analysis.checkpoints import run_checkpoints

    run_checkpoints(cfg, args.checkpoints_dir, args.output)


def cmd_controls(args: argparse.Namespace, cfg: Config) -> None:
    from bigram_subnetworks.analysis.controls import run_controls
    from bigram_subnetworks.models.loading import tune_cpu

    tune_cpu(args.threads)
    run_controls(
        cfg,
        args.models_dir,
        args.checkpoints_dir,
        args.metrics_dir,
        args.selection,
        args.data_dir,
        args.masks_output_dir,
        args.output,
    )


def cmd_report(args: argparse.Namespace, cfg: Config) -> None:
    from bigram_subnetworks.report import find_benchmark_files, run_report

    benchmarks = find_benchmark_files(cfg, args.run_dir, args.data_dir)
    run_report(cfg, args.run_dir, args.data_dir, args.output_dir, args.metrics_json, benchmarks)


def _trusts_remote_code(cfg: Config, args: argparse.Namespace) -> bool:
    spec = cfg.models.get(args.model)
    return bool(getattr(spec, "trust_remote_code", False))


def _lambda_label(text: str) -> str:
    try:
        return check_lambda_label(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# ------------------------------------------------------------------------------- parser


def _stage(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace, Config], None],
    help_text: str,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--config", type=Path, required=True, help="Run config (YAML).")
    parser.add_argument("--log", type=Path, help="Also write the log to this file.")
    parser.set_defaults(func=func, needs_config=True)
    return parser


# Path options shared by several stages, with what they point to.
_PATH_HELP = {
    "--data-dir": "data/<corpus>__<tokenizer>/",
    "--tokenizer": "data/tokenizers/<name>/",
    "--models-dir": "results/<run>/models/",
    "--masks-dir": "results/<run>/masks/",
    "--selection": "results/<run>/selection.json",
    "--output-dir": "results/<run>/metrics/",
    "--checkpoints-dir": "results/<run>/checkpoints/",
    "--metrics-dir": "results/<run>/metrics/",
}


def _paths(parser: argparse.ArgumentParser, *flags: str) -> None:
    for flag in flags:
        parser.add_argument(flag, type=Path, required=True, help=_PATH_HELP[flag])


def _threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, help="Torch threads (default: all).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bsn", description="Bigram subnetworks workflow: run one stage."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _stage(sub, "validate", cmd_validate, "Validate a config file and exit.")

    schema = sub.add_parser("schema", help="Write (or check) the config JSON schema.")
    schema.add_argument("--output", type=Path, default=Path("config/schema.json"))
    schema.add_argument("--check", action="store_true", help="Fail if the file is out of date.")
    schema.set_defaults(func=cmd_schema, needs_config=False)

    p = _stage(sub, "corpus", cmd_corpus, "Read and split the corpus.")
    p.add_argument("--output-dir", type=Path, required=True, help="data/<corpus>/")

    p = _stage(sub, "tokenizer", cmd_tokenizer, "Train or adopt the tokenizer.")
    p.add_argument("--documents", type=Path, required=True, help="documents.parquet")
    p.add_argument("--output-dir", type=Path, required=True, help="data/tokenizers/<name>/")

    p = _stage(sub, "tokenize", cmd_tokenize, "Cut documents into fixed-length token sequences.")
    p.add_argument("--documents", type=Path, required=True, help="documents.parquet")
    p.add_argument("--tokenizer", type=Path, required=True, help="data/tokenizers/<name>/")
    p.add_argument("--output-dir", type=Path, required=True, help="data/<corpus>__<tokenizer>/")

    p = _stage(sub, "bigram-stats", cmd_bigram_stats, "Count bigrams of the train sequences.")
    p.add_argument("--tokens", type=Path, required=True, help="tokens_train.parquet")
    p.add_argument("--output-dir", type=Path, required=True, help="data/<corpus>__<tokenizer>/")

    p = _stage(sub, "pretrain", cmd_pretrain, "Pretrain an embedded model (or resolve a Hub one).")
    p.add_argument("--model", required=True, help="Model name from the config's models.")
    _paths(p, "--data-dir", "--tokenizer")
    p.add_argument("--output-dir", type=Path, required=True, help="results/<run>/models/<name>/")
    _threads(p)

    p = _stage(sub, "train-mask", cmd_train_mask, "Train one mask (model × target × λ).")
    p.add_argument("--model", required=True, help="Model name from the config's models.")
    p.add_argument("--model-dir", type=Path, required=True, help="results/<run>/models/<name>/")
    _paths(p, "--data-dir")
    p.add_argument("--target", required=True, choices=["bigram", "full"])
    p.add_argument("--lambda", dest="lam", required=True, type=_lambda_label, help="e.g. 1e1, inf")
    p.add_argument("--output", type=Path, required=True, help="lambda-<label>.safetensors")
    _threads(p)

    p = _stage(sub, "evaluate", cmd_evaluate, "Evaluate every mask of every model of the run.")
    _paths(p, "--models-dir", "--masks-dir", "--data-dir", "--output-dir")
    _threads(p)

    p = _stage(sub, "select", cmd_select, "Choose the analysed bigram mask and its optimal pair.")
    p.add_argument("--metrics", type=Path, required=True, help="metrics/masks.parquet")
    p.add_argument("--output", type=Path, required=True, help="results/<run>/selection.json")

    p = _stage(sub, "overlap", cmd_overlap, "Overlap of bigram and optimal masks, with p-values.")
    _paths(p, "--models-dir", "--masks-dir", "--selection", "--output-dir")

    p = _stage(sub, "ablate", cmd_ablate, "Ablations and generations of the selected masks.")
    _paths(p, "--models-dir", "--masks-dir", "--selection", "--data-dir", "--tokenizer")
    _paths(p, "--output-dir")
    _threads(p)

    p = _stage(sub, "residual", cmd_residual, "Residual-stream analyses of the selected masks.")
    _paths(p, "--models-dir", "--masks-dir", "--selection", "--data-dir")
    p.add_argument("--output", type=Path, required=True, help="metrics/residual.parquet")
    _threads(p)

    p = _stage(
        sub,
        "checkpoint-masks",
        cmd_checkpoint_masks,
        "Train and score bigram masks at a checkpoint.",
    )
    p.add_argument("--model", required=True, help="Model name from checkpoints.models.")
    p.add_argument("--model-dir", type=Path, required=True, help="results/<run>/models/<name>/")
    p.add_argument("--step", type=int, required=True, help="Training step of the checkpoint.")
    _paths(p, "--data-dir")
    p.add_argument(
        "--output-dir", type=Path, required=True, help="results/<run>/checkpoints/<name>/step-<N>/"
    )
    _threads(p)

    p = _stage(sub, "checkpoints", cmd_checkpoints, "Gather checkpoint metrics; fit r vs size.")
    _paths(p, "--checkpoints-dir")
    p.add_argument("--output", type=Path, required=True, help="metrics/checkpoints.parquet")

    p = _stage(sub, "controls", cmd_controls, "Random-initialisation and embedding controls.")
    _paths(p, "--models-dir", "--checkpoints-dir", "--metrics-dir", "--selection", "--data-dir")
    p.add_argument("--masks-output-dir", type=Path, required=True, help="results/<run>/controls/")
    p.add_argument("--output", type=Path, required=True, help="metrics/controls.parquet")
    _threads(p)

    p = _stage(sub, "report", cmd_report, "Figures, HTML report, paper comparison and metrics.")
    p.add_argument("--run-dir", type=Path, required=True, help="results/<run>/")
    _paths(p, "--data-dir")
    p.add_argument("--output-dir", type=Path, required=True, help="results/<run>/report/")
    p.add_argument("--metrics-json", type=Path, required=True, help="results/<run>/metrics.json")

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
