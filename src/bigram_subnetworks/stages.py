"""The stage registry: every stage of the pipeline, declared once.

For each stage: its name (the Snakemake rule and DVC stage), the `bsn` command and the function it
runs, its named inputs and outputs (artifacts from `artifacts.py`), the config keys it reads, its
grid of jobs and its resources. Everything else derives from this table:

- `bsn <command>`'s options (`cli.py`), one per wildcard, input and output;
- the Snakemake rules (`workflow/rules/stages.smk` loops over the registry);
- `dvc.yaml` (`bsn dvc` generates it for any config; see `dvc_yaml`);
- the shared-data folder keys (`data_keys`): a readable name plus a hash of exactly the keys that
  produce the folder, so configs share data when they agree and never overwrite each other;
- rerun decisions: both front-ends track, per job, the values of exactly the keys the stage reads.

Torch-free: the front-ends import this module at parse time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bigram_subnetworks import artifacts as A
from bigram_subnetworks.artifacts import RANDOM_BODY, Artifact, model_key, split_model_key
from bigram_subnetworks.config import Config

Wildcards = dict[str, str]

# ------------------------------------------------------------------------------------- grids


def checkpoint_key(cfg: Config, model: str, step: int) -> str:
    """The model key of a checkpoint's masks: the model's own key at its final step (the main grid's
    masks are reused), else `<model>+step-<N>`."""
    return model if step == cfg.models[model].final_step else model_key(model, f"step-{step}")


def main_masks(cfg: Config) -> list[Wildcards]:
    """Every mask of the main grid: model × target × λ label (the n-gram targets in order of n,
    then `full`)."""
    if cfg.lambdas is None:
        return []
    return [
        {"model": model, "target": target, "lam": label}
        for model in cfg.models
        for target, labels in cfg.lambdas.grids().items()
        for label in labels
    ]


def paper_masks(cfg: Config) -> list[Wildcards]:
    """The main grid's bigram and full-model masks: the paper's analyses (overlap, ablations,
    residual stream, the report's figures) read these and no other order's."""
    return [job for job in main_masks(cfg) if job["target"] in ("bigram", "full")]


def high_orders(cfg: Config) -> list[Wildcards]:
    """The configured n-gram orders whose counts the ngram_stats stage makes (n >= 3; orders 1
    and 2 come from the bigram statistics)."""
    grids = cfg.lambdas.grids() if cfg.lambdas is not None else {}
    orders = [A.ngram_order(target) for target in grids]
    return [{"order": str(n)} for n in sorted(n for n in orders if n is not None and n >= 3)]


def _counted_elsewhere(job: Wildcards) -> bool:
    """A mask job whose target needs the ngram_stats stage's counts (an n-gram order >= 3)."""
    order = A.ngram_order(job["target"])
    return order is not None and order >= 3


def checkpoint_masks(cfg: Config) -> list[Wildcards]:
    """The bigram masks of every configured checkpoint (the final one's from the main grid)."""
    if cfg.checkpoints is None:
        return []
    return [
        {"model": checkpoint_key(cfg, model, step), "target": "bigram", "lam": label}
        for model in cfg.checkpoints.models
        for step in cfg.checkpoints.steps
        for label in cfg.checkpoints.lambdas
    ]


def control_models(cfg: Config) -> list[Wildcards]:
    """The models of the Table 2 controls (run with `checkpoints`): every embedded model (each
    saves step 0) and every checkpoint model (its step 0 is analysed), in config order."""
    if cfg.checkpoints is None:
        return []
    followed = set(cfg.checkpoints.models)
    return [
        {"model": m} for m, spec in cfg.models.items() if spec.source == "embedded" or m in followed
    ]


def control_masks(cfg: Config) -> list[Wildcards]:
    """The λ = 0 bigram masks of the Table 2 controls, per control model: the random
    initialisation's (step 0; a checkpoint model's trajectory trains it too) and the random
    body's with the trained embeddings."""
    return [
        {"model": key, "target": "bigram", "lam": "0"}
        for job in control_models(cfg)
        for key in (
            checkpoint_key(cfg, job["model"], 0),
            model_key(job["model"], RANDOM_BODY),
        )
    ]


def all_masks(cfg: Config) -> list[Wildcards]:
    """Every mask the config asks for, each once."""
    seen: dict[str, Wildcards] = {}
    for job in main_masks(cfg) + checkpoint_masks(cfg) + control_masks(cfg):
        seen.setdefault(job_id(job), job)
    return list(seen.values())


def mask_jobs(cfg: Config) -> list[Wildcards]:
    """The train_mask stage's jobs: every mask whose target the bigram statistics describe
    (unigram, bigram, full)."""
    return [job for job in all_masks(cfg) if not _counted_elsewhere(job)]


def ngram_mask_jobs(cfg: Config) -> list[Wildcards]:
    """The train_ngram_mask stage's jobs: the masks of n-gram targets of order >= 3."""
    return [job for job in all_masks(cfg) if _counted_elsewhere(job)]


def ngram_masks(cfg: Config) -> list[Wildcards]:
    """The main grid's masks of every n-gram target (the ngrams stage reads each order's
    selected one)."""
    return [job for job in main_masks(cfg) if A.ngram_order(job["target"]) is not None]


def _has_ngram_orders(cfg: Config) -> bool:
    """Two or more n-gram targets are configured (the ngrams stage compares their masks)."""
    grids = cfg.lambdas.grids() if cfg.lambdas is not None else {}
    return sum(A.ngram_order(target) is not None for target in grids) >= 2


def models_grid(cfg: Config) -> list[Wildcards]:
    return [{"model": model} for model in cfg.models]


def embedded_models(cfg: Config) -> list[Wildcards]:
    """Models trained here (the pretrain stage)."""
    return [{"model": m} for m, spec in cfg.models.items() if spec.source == "embedded"]


def fetched_models(cfg: Config) -> list[Wildcards]:
    """Models from the Hub or a local folder (the fetch stage)."""
    return [{"model": m} for m, spec in cfg.models.items() if spec.source != "embedded"]


def reference_grid(cfg: Config) -> list[Wildcards]:
    """Every configured authors' mask: model × λ label (`reference_masks`)."""
    return [
        {"model": model, "lam": label}
        for model, sources in (cfg.reference_masks or {}).items()
        for label in sources
    ]


def checkpoint_models(cfg: Config) -> list[Wildcards]:
    return [{"model": m} for m in (cfg.checkpoints.models if cfg.checkpoints else [])]


def job_id(wildcards: Wildcards) -> str:
    """A job's name within its stage: its wildcard values joined by '-'."""
    return "-".join(wildcards.values())


# ---------------------------------------------------------------------------------- stages


def always(cfg: Config) -> bool:
    """The default condition of ports and stages: present in every config."""
    return True


def never(cfg: Config) -> bool:
    return False


@dataclass(frozen=True)
class Port:
    """A named input or output: one artifact for the job's own wildcards, or (with `each`) the
    artifact for every job of a grid. `rename` maps an artifact placeholder to another field (a
    mask job reads the folder of its model key's base model: {"model": "base"})."""

    artifact: Artifact
    each: Callable[[Config], list[Wildcards]] | None = None
    when: Callable[[Config], bool] = always
    rename: tuple[tuple[str, str], ...] = ()

    def _fields(self, fields: dict[str, str]) -> dict[str, str]:
        return fields | {placeholder: fields[source] for placeholder, source in self.rename}

    def _jobs(self, cfg: Config, fields: dict[str, str]) -> list[dict[str, str]]:
        if self.each is None:
            return [self._fields(fields)]
        return [self._fields(fields | job) for job in self.each(cfg)]

    def paths(self, cfg: Config, fields: dict[str, str]) -> list[str]:
        """What the command receives: files, or folders for folder artifacts."""
        return [self.artifact.render(**f) for f in self._jobs(cfg, fields)]

    def tracked(self, cfg: Config, fields: dict[str, str], dvc: bool = False) -> list[str]:
        """The files a front-end tracks (DVC: whole folders where the artifact says so)."""
        if dvc and self.artifact.dvc_folder:
            return self.paths(cfg, fields)
        return [path for f in self._jobs(cfg, fields) for path in self.artifact.tracked(**f)]


def _one(artifact: Artifact, **kwargs: Any) -> Port:
    return Port(artifact, **kwargs)


def _each(artifact: Artifact, grid: Callable[[Config], list[Wildcards]], **kwargs: Any) -> Port:
    return Port(artifact, each=grid, **kwargs)


@dataclass(frozen=True)
class Stage:
    """One stage: a `bsn` command that runs `run(cfg, **paths)` over a grid of jobs."""

    name: str
    help: str
    run: str  # "module:function", called with the (restricted) config and one keyword per port
    inputs: dict[str, Port]
    outputs: dict[str, Port]
    reads: tuple[str, ...]  # config keys; "{model}"/"{base}" stand for the job's model name
    wildcards: tuple[str, ...] = ()  # the keys of each grid job
    grid: Callable[[Config], list[Wildcards]] | None = None
    enabled: Callable[[Config], bool] = always
    torch: bool = False  # runs models: all cores, and one GPU when the config uses CUDA
    threads: bool = False  # uses all cores without torch
    shared: bool = False  # writes shared data: logs beside it, not under results/<run>/
    front_ends: tuple[str, ...] = ("snakemake", "dvc")
    logged: bool = True  # writes a log file (the config stage only prints)
    network: Callable[[Config], bool] = never  # needs the network: runs where it is (local rule)
    # Scheduling order where jobs wait for cores (Snakemake): long jobs that gate whole chains
    # of later jobs go first, so a small machine is never left with one of them at the end.
    priority: int = 0

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    def jobs(self, cfg: Config) -> list[Wildcards]:
        return self.grid(cfg) if self.grid else [{}]

    def ports(self, cfg: Config) -> dict[str, Port]:
        """Inputs then outputs that apply to this config."""
        ports = {**self.inputs, **self.outputs}
        return {name: port for name, port in ports.items() if port.when(cfg)}

    def log(self, cfg: Config) -> str:
        """The log path template (wildcards left as `{name}` placeholders)."""
        names = self.wildcards
        if self.shared:
            first = next(iter(self.outputs.values())).artifact
            folder = first.path if first.is_folder else first.path.rsplit("/", 1)[0]
            return f"{folder}/logs/{'-'.join([self.name, *(f'{{{n}}}' for n in names)])}.log"
        if not names:
            return f"results/{{run}}/logs/{self.name}.log"
        return f"results/{{run}}/logs/{self.name}/{'-'.join(f'{{{n}}}' for n in names)}.log"

    def benchmark(self, cfg: Config) -> str:
        """Where Snakemake writes the job's benchmark (beside the log for shared data)."""
        log = self.log(cfg)
        if self.shared:
            return log.removesuffix(".log") + ".benchmark.tsv"
        return log.replace("/logs/", "/benchmarks/", 1).removesuffix(".log") + ".tsv"


def _local_corpus(cfg: Config) -> bool:
    return cfg.corpus.source == "local"


def _trained_tokenizer(cfg: Config) -> bool:
    return cfg.tokenizer.source == "train"


def _has_checkpoints(cfg: Config) -> bool:
    return cfg.checkpoints is not None


def _hub_corpus(cfg: Config) -> bool:
    return cfg.corpus.source == "huggingface"


def _hub_tokenizer(cfg: Config) -> bool:
    tokenizer = cfg.tokenizer
    return tokenizer.source == "pretrained" and not Path(tokenizer.model).exists()


def _streamed_bigrams(cfg: Config) -> bool:
    """The bigram statistics stream data.bigram_tokens tokens from the corpus source."""
    return cfg.data.bigram_tokens is not None


def _counted_in_memory(cfg: Config) -> bool:
    return not _streamed_bigrams(cfg)


def _streamed_local(cfg: Config) -> bool:
    return _streamed_bigrams(cfg) and _local_corpus(cfg)


def _streamed_hub(cfg: Config) -> bool:
    return _streamed_bigrams(cfg) and _hub_corpus(cfg)


def _has_high_orders(cfg: Config) -> bool:
    return bool(high_orders(cfg))


def _has_embedded(cfg: Config) -> bool:
    return bool(embedded_models(cfg))


def _has_fetched(cfg: Config) -> bool:
    return bool(fetched_models(cfg))


def _has_references(cfg: Config) -> bool:
    return bool(cfg.reference_masks)


def _hub_references(cfg: Config) -> bool:
    from bigram_subnetworks.masks.reference import HUB_PREFIX

    sources = (cfg.reference_masks or {}).values()
    return any(text.startswith(HUB_PREFIX) for labels in sources for text in labels.values())


def _hub_models(cfg: Config) -> bool:
    return any(spec.source == "huggingface" for spec in cfg.models.values())


def _figures(cfg: Config) -> list[Wildcards]:
    names = A.figure_names(cfg.checkpoints is not None, _has_ngram_orders(cfg))
    return [{"figure": name} for name in names]


def _plots(cfg: Config) -> list[Wildcards]:
    names = ["sparsity", "checkpoints"] if cfg.checkpoints else ["sparsity"]
    return [{"plot": name} for name in names]


# The effective config every stage reads (DVC makes it in the `config` stage; Snakemake writes it
# when it reads the workflow, from its own `config`, which --configfile/--config/modules set).
CORPUS_SOURCE = Artifact("{corpus_path}", "the local corpus folder (its files are tracked)")
SEQUENCES = ("data.seq_len", "data.max_train_sequences", "data.max_eval_sequences")
TORCH = ("device", "threads")  # where and on how many threads a model runs (results' last bits)
SCORING = ("seed", *TORCH, "analysis.eval_sequences", "analysis.batch_size")
BOOTSTRAP = "analysis.bootstrap_resamples"  # the intervals of every r a stage writes
MASK_OF_BASE = (("model", "base"),)
DATA = {
    "tokens_eval": _one(A.TOKENS_EVAL),
    "bigram_stats": _one(A.BIGRAM_STATS),
}
RUN_MODELS = _each(A.MODEL, models_grid)
MAIN_MASKS = _each(A.MASK, main_masks)
PAPER_MASKS = _each(A.MASK, paper_masks)
NGRAM_TABLES = {  # the counts of every configured order >= 3, for the stages that score them
    "ngram_stats": _each(A.NGRAM_STATS, high_orders, when=_has_high_orders),
    "ngram_meta": _each(A.NGRAM_META, high_orders, when=_has_high_orders),
}
MASK_INPUTS = {
    "model_dir": _one(A.MODEL, rename=MASK_OF_BASE),
    "tokens_train": _one(A.TOKENS_TRAIN),
    "bigram_stats": _one(A.BIGRAM_STATS),
}
MASK_OUTPUTS = {
    "mask": _one(A.MASK),
    "mask_log": _one(A.MASK_LOG),
    "mask_curve": _one(A.MASK_CURVE),
}
MASK_READS = ("seed", *TORCH, "masks", "models.{base}")

_STAGES = [
    Stage(
        "config",
        "Validate a config and write the run's effective config (every default filled in).",
        "bigram_subnetworks.config:run_stage",
        inputs={},
        outputs={"output": _one(A.RUN_CONFIG)},
        reads=("",),
        front_ends=("dvc",),
        logged=False,
    ),
    Stage(
        "corpus",
        "Read and split the corpus.",
        "bigram_subnetworks.data.corpus:run_stage",
        inputs={"source": _one(CORPUS_SOURCE, when=_local_corpus)},
        outputs={"documents": _one(A.DOCUMENTS), "manifest": _one(A.CORPUS_MANIFEST)},
        reads=("seed", "corpus"),
        shared=True,
        network=_hub_corpus,
    ),
    Stage(
        "tokenizer",
        "Train the tokenizer on the train split, or adopt a model's own.",
        "bigram_subnetworks.data.tokenizer:run_stage",
        inputs={"documents": _one(A.DOCUMENTS, when=_trained_tokenizer)},
        outputs={"tokenizer": _one(A.TOKENIZER)},
        reads=("tokenizer",),
        threads=True,
        shared=True,
        network=_hub_tokenizer,
    ),
    Stage(
        "tokenize",
        "Cut documents into fixed-length token sequences.",
        "bigram_subnetworks.data.tokenize:run_stage",
        inputs={"documents": _one(A.DOCUMENTS), "tokenizer": _one(A.TOKENIZER)},
        outputs={
            "tokens_train": _one(A.TOKENS_TRAIN),
            "tokens_eval": _one(A.TOKENS_EVAL),
            "tokens_meta": _one(A.TOKENS_META),
        },
        reads=("seed", *SEQUENCES),
        threads=True,
        shared=True,
    ),
    Stage(
        "bigram_stats",
        "Count the bigrams of the train sequences, or (data.bigram_tokens) stream that many "
        "tokens of the train documents from the corpus source.",
        "bigram_subnetworks.data.bigrams:run_stage",
        inputs={
            "tokens_train": _one(A.TOKENS_TRAIN, when=_counted_in_memory),
            "tokens_meta": _one(A.TOKENS_META, when=_counted_in_memory),
            "documents": _one(A.DOCUMENTS, when=_streamed_bigrams),
            "tokenizer": _one(A.TOKENIZER, when=_streamed_bigrams),
            "source": _one(CORPUS_SOURCE, when=_streamed_local),
        },
        outputs={"bigram_stats": _one(A.BIGRAM_STATS)},
        reads=("data.bigram_tokens", "data.seq_len", "corpus"),
        threads=True,
        shared=True,
        network=_streamed_hub,
    ),
    Stage(
        "ngram_stats",
        "Count the n-grams of one order n >= 3 of the train sequences (the contexts of the "
        "trigram target; orders 1 and 2 are the bigram statistics).",
        "bigram_subnetworks.data.ngrams:run_stage",
        inputs={
            "tokens_train": _one(A.TOKENS_TRAIN),
            "tokens_meta": _one(A.TOKENS_META),
            "bigram_stats": _one(A.BIGRAM_STATS),
        },
        outputs={"ngram_stats": _one(A.NGRAM_STATS), "ngram_meta": _one(A.NGRAM_META)},
        reads=("data.bigram_tokens",),
        wildcards=("order",),
        grid=high_orders,
        enabled=_has_high_orders,
        threads=True,
        shared=True,
    ),
    Stage(
        "fetch",
        "Download a Hub model and its checkpoint revisions into the Hub cache, recording their "
        "commits (or check a local model folder).",
        "bigram_subnetworks.models.hub:run_stage",
        inputs={},
        outputs={"model_dir": _one(A.MODEL)},
        reads=(
            "hub_cache",
            "models.{model}",
            "checkpoints.models",
            "checkpoints.steps",
            "checkpoints.duplicate_steps",
        ),
        wildcards=("model",),
        grid=fetched_models,
        enabled=_has_fetched,
        network=_hub_models,
    ),
    Stage(
        "pretrain",
        "Pretrain an embedded model (GPT-NeoX, trained here from scratch).",
        "bigram_subnetworks.models.pretrain:run_stage",
        inputs={
            "tokens_train": _one(A.TOKENS_TRAIN),
            **DATA,
            "tokenizer": _one(A.TOKENIZER),
        },
        outputs={"model_dir": _one(A.MODEL)},
        reads=("seed", *TORCH, "models.{model}"),
        wildcards=("model",),
        grid=embedded_models,
        enabled=_has_embedded,
        torch=True,
        priority=1,
    ),
    Stage(
        "train_mask",
        "Train one mask: model key (a model, a checkpoint or a control) × target × λ.",
        "bigram_subnetworks.masks.stage:run_stage",
        inputs=MASK_INPUTS,
        outputs=MASK_OUTPUTS,
        reads=MASK_READS,
        wildcards=("model", "target", "lam"),
        grid=mask_jobs,
        torch=True,
    ),
    Stage(
        "train_ngram_mask",
        "Train one mask of an n-gram target of order >= 3: train_mask's job with the order's "
        "counts as a further input (so the other masks never wait for or rerun on them).",
        "bigram_subnetworks.masks.stage:run_stage",
        inputs={**MASK_INPUTS, **NGRAM_TABLES},
        outputs=MASK_OUTPUTS,
        reads=MASK_READS,
        wildcards=("model", "target", "lam"),
        grid=ngram_mask_jobs,
        enabled=_has_high_orders,
        torch=True,
    ),
    Stage(
        "evaluate",
        "Score every mask of the main grid (and each full model) on held-out sequences.",
        "bigram_subnetworks.analysis.evaluate:run_stage",
        inputs={"models": RUN_MODELS, "masks": MAIN_MASKS, **DATA, **NGRAM_TABLES},
        outputs={
            "mask_metrics": _one(A.MASK_METRICS),
            "blocks": _one(A.BLOCKS),
            "mask_replicates": _one(A.MASK_REPLICATES),
        },
        reads=(*SCORING, BOOTSTRAP, "analysis.min_context_count"),
        torch=True,
    ),
    Stage(
        "select",
        "Choose each model's analysed bigram mask and its optimal-pruning pair.",
        "bigram_subnetworks.analysis.select:run_stage",
        inputs={"mask_metrics": _one(A.MASK_METRICS)},
        outputs={"selection": _one(A.SELECTION)},
        reads=("analysis.selection_tolerance",),
    ),
    Stage(
        "reference_mask",
        "Import one of the paper authors' released masks (reference_masks) as a mask file.",
        "bigram_subnetworks.masks.reference:run_stage",
        inputs={"model_dir": _one(A.MODEL)},
        outputs={"mask": _one(A.REFERENCE_MASK)},
        reads=("reference_masks.{model}",),
        wildcards=("model", "lam"),
        grid=reference_grid,
        enabled=_has_references,
        network=_hub_references,
    ),
    Stage(
        "overlap",
        "Overlap of every bigram and optimal mask pair, with its null distribution.",
        "bigram_subnetworks.analysis.overlap:run_stage",
        inputs={
            "models": RUN_MODELS,
            "masks": PAPER_MASKS,
            "selection": _one(A.SELECTION),
            "references": _each(A.REFERENCE_MASK, reference_grid, when=_has_references),
        },
        outputs={
            "overlap": _one(A.OVERLAP),
            "overlap_null": _one(A.OVERLAP_NULL),
            "reference_overlap": _one(A.REFERENCE_OVERLAP, when=_has_references),
        },
        reads=("seed", "analysis.overlap_draws"),
    ),
    Stage(
        "ngrams",
        "Compare the selected masks of every n-gram order: sparsity, nesting against both "
        "overlap nulls, per-layer × block location.",
        "bigram_subnetworks.analysis.ngrams:run_stage",
        inputs={
            "models": RUN_MODELS,
            "masks": _each(A.MASK, ngram_masks),
            "selection": _one(A.SELECTION),
        },
        outputs={"ngrams": _one(A.NGRAMS)},
        reads=("seed", "analysis.overlap_draws"),
        enabled=_has_ngram_orders,
    ),
    Stage(
        "ablate",
        "Ablations and generations of each model's selected masks.",
        "bigram_subnetworks.analysis.ablate:run_stage",
        inputs={
            "models": RUN_MODELS,
            "masks": PAPER_MASKS,
            "selection": _one(A.SELECTION),
            **DATA,
            "tokenizer": _one(A.TOKENIZER),
        },
        outputs={"ablations": _one(A.ABLATIONS), "generations": _one(A.GENERATIONS)},
        reads=(
            *SCORING,
            "analysis.prompts",
            "analysis.max_new_tokens",
            "analysis.temperature",
        ),
        torch=True,
    ),
    Stage(
        "residual",
        "Residual-stream analyses of each model's selected bigram mask.",
        "bigram_subnetworks.analysis.residual:run_stage",
        inputs={
            "models": RUN_MODELS,
            "masks": PAPER_MASKS,
            "selection": _one(A.SELECTION),
            **DATA,
        },
        outputs={"residual": _one(A.RESIDUAL)},
        reads=(
            "seed",
            *TORCH,
            "analysis.residual_sequences",
            "analysis.batch_size",
            BOOTSTRAP,
        ),
        torch=True,
    ),
    Stage(
        "checkpoints",
        "Score the bigram masks of every checkpoint; fit r against active parameters.",
        "bigram_subnetworks.analysis.checkpoints:run_stage",
        inputs={
            "models": _each(A.MODEL, checkpoint_models),
            "masks": _each(A.MASK, checkpoint_masks),
            **DATA,
        },
        outputs={
            "checkpoints": _one(A.CHECKPOINTS),
            "checkpoint_replicates": _one(A.CHECKPOINT_REPLICATES),
        },
        reads=(*SCORING, BOOTSTRAP, "checkpoints.steps", "checkpoints.budgets"),
        enabled=_has_checkpoints,
        torch=True,
    ),
    Stage(
        "controls",
        "The paper's Table 2 controls: random initialisation, trained embeddings, linear map.",
        "bigram_subnetworks.analysis.controls:run_stage",
        inputs={
            "models": _each(A.MODEL, control_models),
            "masks": _each(A.MASK, control_masks),
            "mask_metrics": _one(A.MASK_METRICS),
            "residual": _one(A.RESIDUAL),
            "selection": _one(A.SELECTION),
            **DATA,
        },
        outputs={
            "controls": _one(A.CONTROLS),
            "control_replicates": _one(A.CONTROL_REPLICATES),
        },
        reads=(*SCORING, BOOTSTRAP),
        enabled=_has_checkpoints,
        torch=True,
    ),
    Stage(
        "report",
        "Figures, the HTML report, the paper comparison and DVC metrics of a finished run.",
        "bigram_subnetworks.report.build:run_stage",
        inputs={
            "models": RUN_MODELS,
            "mask_logs": _each(A.MASK_LOG, paper_masks),
            "tokens_meta": _one(A.TOKENS_META),
            "bigram_stats": _one(A.BIGRAM_STATS),
            "mask_metrics": _one(A.MASK_METRICS),
            "blocks": _one(A.BLOCKS),
            "selection": _one(A.SELECTION),
            "overlap": _one(A.OVERLAP),
            "overlap_null": _one(A.OVERLAP_NULL),
            "reference_overlap": _one(A.REFERENCE_OVERLAP, when=_has_references),
            "ngrams": _one(A.NGRAMS, when=_has_ngram_orders),
            "ablations": _one(A.ABLATIONS),
            "generations": _one(A.GENERATIONS),
            "residual": _one(A.RESIDUAL),
            "checkpoints": _one(A.CHECKPOINTS, when=_has_checkpoints),
            "controls": _one(A.CONTROLS, when=_has_checkpoints),
            "mask_replicates": _one(A.MASK_REPLICATES),
            "checkpoint_replicates": _one(A.CHECKPOINT_REPLICATES, when=_has_checkpoints),
            "control_replicates": _one(A.CONTROL_REPLICATES, when=_has_checkpoints),
        },
        outputs={
            "figures": _each(A.REPORT_FIGURE, _figures),
            "html": _one(A.REPORT_HTML),
            "summary": _one(A.REPORT_SUMMARY),
            "plots": _each(A.REPORT_PLOT, _plots),
            "metrics_json": _one(A.RUN_METRICS),
        },
        reads=("",),
    ),
]
STAGES: dict[str, Stage] = {stage.name: stage for stage in _STAGES}


def stages_for(cfg: Config, front_end: str) -> list[Stage]:
    """The stages a config has in a front-end, in DAG order."""
    return [s for s in _STAGES if s.enabled(cfg) and front_end in s.front_ends]


# ------------------------------------------------------------------------ keys and settings


def _lookup(tree: Any, parts: list[str]) -> Any:
    """The value at a key path (None below a section the config leaves out, such as
    `checkpoints: null`)."""
    for part in parts:
        if tree is None:
            return None
        tree = tree[part]
    return tree


def key_parts(key: str, fields: dict[str, str]) -> list[str]:
    """A declared key as path parts, with `{model}`/`{base}` filled in from the job's fields."""
    return [part.format(**fields) for part in key.split(".")] if key else []


def settings(stage: Stage, cfg: Config, fields: dict[str, str]) -> dict[str, Any]:
    """The values of exactly the config keys a job reads (its rerun trigger in both front-ends)."""
    tree = cfg.model_dump(mode="json")
    return {
        ".".join(parts) or "<config>": _lookup(tree, parts)
        for parts in (key_parts(key, fields) for key in stage.reads)
    }


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def data_keys(cfg: Config) -> dict[str, str]:
    """Folder keys of the shared data: a readable name plus a hash of what produces the folder."""
    corpus = f"{cfg.corpus.name}-{_digest(settings(STAGES['corpus'], cfg, {}))}"
    trained_on = corpus if cfg.tokenizer.source == "train" else None
    tokenizer_settings = [settings(STAGES["tokenizer"], cfg, {}), trained_on]
    tokenizer = f"{cfg.tokenizer.name}-{_digest(tokenizer_settings)}"
    made_here = [settings(STAGES[name], cfg, {}) for name in ("tokenize", "bigram_stats")]
    data_settings = [*made_here, corpus, tokenizer]
    data = f"{cfg.corpus.name}__{cfg.tokenizer.name}-{_digest(data_settings)}"
    return {"corpus": corpus, "tokenizer": tokenizer, "data": data}


def config_fields(cfg: Config) -> dict[str, str]:
    """Placeholder values shared by every job of a config."""
    fields = {"run": cfg.run, **data_keys(cfg)}
    if cfg.corpus.source == "local":
        fields["corpus_path"] = str(cfg.corpus.path).rstrip("/")
    return fields


def job_fields(cfg: Config, wildcards: Wildcards) -> dict[str, str]:
    """Every placeholder value of one job: the config's, its wildcards and the model key's base."""
    fields = config_fields(cfg) | wildcards
    if "model" in wildcards:
        fields["base"] = split_model_key(wildcards["model"])[0]
    return fields


def run_config_path(cfg: Config) -> str:
    return A.RUN_CONFIG.render(run=cfg.run)


# -------------------------------------------------------------------------------- commands


def option(name: str) -> str:
    """The command-line option of a wildcard or port."""
    return "--lambda" if name == "lam" else "--" + name.replace("_", "-")


def arguments(stage: Stage, cfg: Config, fields: dict[str, str]) -> list[str]:
    """A job's command-line arguments after `--config` (wildcards, inputs, outputs, log), from
    its fields (`job_fields`)."""
    args: list[str] = []
    for name in stage.wildcards:
        args += [option(name), fields[name]]
    for name, port in stage.ports(cfg).items():
        args += [option(name), *port.paths(cfg, fields)]
    return [*args, "--log", stage.log(cfg).format(**fields)] if stage.logged else args


def dvc_params(stage: Stage, cfg: Config, fields: dict[str, str]) -> list[str]:
    """DVC parameter keys of a job (or of a `foreach` body: `fields` may hold `${item.x}`). DVC
    splits keys at '.', so a key naming something with a '.' in its name (a model `gpt2-1.5b`)
    is tracked through its parent."""
    values = {
        name: {job_fields(cfg, job).get(name, "") for job in stage.jobs(cfg)}
        for name in ("model", "base")
    }

    def dotted(part: str) -> bool:
        placeholder = part[1:-1] if part.startswith("{") else None
        return any("." in v for v in values[placeholder]) if placeholder else "." in part

    tree = cfg.model_dump(mode="json")
    keys = []
    for key in stage.reads:
        parts = key.split(".") if key else []
        while any(dotted(part) for part in parts):
            parts = parts[:-1]
        literal = all("{" not in part for part in parts)
        while literal and len(parts) > 1 and _lookup(tree, parts[:-1]) is None:
            parts = parts[:-1]  # a section left out (null) is tracked as a whole
        keys.append(".".join(part.format(**fields) for part in parts))
    return keys


def benchmark_files(cfg: Config) -> list[Path]:
    """Every benchmark file Snakemake writes for a config's jobs, in DAG order."""
    return [
        Path(stage.benchmark(cfg).format(**job_fields(cfg, job)))
        for stage in stages_for(cfg, "snakemake")
        for job in stage.jobs(cfg)
    ]
