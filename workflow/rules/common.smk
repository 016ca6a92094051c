# Config loading and path helpers shared by every rule file.
#
# The package validates the config (and fills its defaults) before any rule is defined, so an
# invalid value stops Snakemake with one line naming the field. Rules pass the same file to `bsn`.
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from bigram_subnetworks.config import ConfigError, load_config


def _config_file():
    """The one complete config this run uses: the --configfile given, else params.yaml."""
    files = [os.path.relpath(f) for f in workflow.overwrite_configfiles]
    if len(files) > 1:
        sys.exit(
            f"snakemake: pass one complete --configfile, got {len(files)}: {files}"
        )
    if workflow.config_settings.config:
        sys.exit(
            "snakemake: --config overrides are not passed to the stages; copy the config file, "
            "edit it and pass it with --configfile"
        )
    return files[0] if files else "params.yaml"


CONFIG_FILE = _config_file()
try:
    CFG = load_config(CONFIG_FILE)
except ConfigError as error:
    sys.exit(str(error))

CORPUS_DIR = CFG.corpus_dir.as_posix()
TOKENIZER_DIR = CFG.tokenizer_dir.as_posix()
DATA_DIR = CFG.data_dir.as_posix()
RUN_DIR = CFG.run_dir.as_posix()
# One environment for the whole workflow (used with --software-deployment-method conda).
ENVIRONMENT = "../../environment.yml"


def output_dir(wildcards, output):
    """The folder a stage writes into (the folder of its first output)."""
    return os.path.dirname(output[0])


def corpus_inputs(wildcards):
    """Files of a local corpus folder, so editing one reruns the corpus stage."""
    if CFG.corpus.source != "local":
        return []
    root = Path(CFG.corpus.path)
    suffixes = (".txt", ".jsonl", ".parquet")
    return sorted(
        str(p) for p in root.rglob("*") if p.is_file() and p.suffix in suffixes
    )


MODELS = list(CFG.models)
# (model, target, λ label) of every mask the config asks for.
MASK_JOBS = [
    (model, target, label)
    for model in MODELS
    for target in ("bigram", "full")
    for label in (getattr(CFG.lambdas, target) if CFG.lambdas else [])
]

# (model, step) of every checkpoint whose bigram masks the config asks for.
CHECKPOINTS = CFG.checkpoints
CHECKPOINT_JOBS = (
    [(model, step) for model in CHECKPOINTS.models for step in CHECKPOINTS.steps]
    if CHECKPOINTS
    else []
)


def _all_cores():
    """The --cores given (torch and tokenizer stages use them all); 1 for commands such as
    --unlock that give none."""
    try:
        cores = workflow.cores
    except WorkflowError:
        return 1
    # Cluster executors report an unbounded core count; profiles set their threads per rule.
    return min(cores, os.cpu_count() or 1)


ALL_CORES = _all_cores()
# Torch stages take every core (two torch jobs sharing the cores each run ~4x slower) and one GPU
# when the config runs on CUDA.
GPUS = 0 if CFG.device == "cpu" else 1


wildcard_constraints:
    model="[A-Za-z0-9][A-Za-z0-9._-]*",
    target="bigram|full",
    lam="neginf|inf|0|[1-9](e[1-9][0-9]*)?",
    step="[0-9]+",


def mask_path(model, target, lam):
    return f"{RUN_DIR}/masks/{model}/{target}/lambda-{lam}.safetensors"


def checkpoint_metrics(model, step):
    return f"{RUN_DIR}/checkpoints/{model}/step-{step}/metrics.parquet"


def folder_of(key, levels=1, of="input"):
    """A params function: the folder `levels` up from input (or output) `key` (its first file if a
    list), so folders passed to `bsn` follow the declared files."""

    def folder(wildcards, input, output):
        files = input if of == "input" else output
        path = files[key] if isinstance(files[key], str) else files[key][0]
        for _ in range(levels):
            path = os.path.dirname(path)
        return path

    return folder
