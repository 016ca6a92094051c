"""The run configuration: a typed model, validated before any work, with one-line errors.

`params.yaml` (the embedded default) and the files under `config/` are read by Snakemake, DVC and
`bsn` alike. This module is the validator for all three; `config/schema.json` is exported from it.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import numpy as np
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from bigram_subnetworks.errors import UserError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class ConfigError(UserError):
    """A configuration problem, described in one line that names the field and the fix."""


def _parse_number(value: Any) -> Any:
    """Accept YAML strings such as '1e-2' or 'inf', which PyYAML does not read as floats."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Number = Annotated[float, BeforeValidator(_parse_number)]
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=80)]
Fraction = Annotated[Number, Field(gt=0.0, lt=1.0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _CorpusBase(_Section):
    name: Name = Field(description="Names the corpus folder: data/<name>/.")
    eval_fraction: Fraction = Field(
        0.1, description="Fraction of whole documents held out for evaluation (seeded)."
    )
    max_documents: Annotated[int, Field(ge=2)] | None = Field(
        None,
        description="Use at most this many documents: a seeded sample for sotu and local, "
        "the first ones for huggingface.",
    )


class SotuCorpus(_CorpusBase):
    """U.S. State of the Union addresses from the `sotu` package (the embedded default)."""

    source: Literal["sotu"]
    split: Literal["random", "by_year"] = Field(
        "random",
        description="random: a seeded random set of addresses is held out; by_year: the most "
        "recent addresses are held out (leaves more eval bigrams unseen in training).",
    )
    strip_editorial_notes: bool = Field(
        True, description="Remove bracketed notes such as [Laughter] or [Applause]."
    )


class LocalCorpus(_CorpusBase):
    """A folder of .txt, .jsonl and .parquet files, read recursively in sorted order."""

    source: Literal["local"]
    path: str = Field(description="Folder with the corpus files (relative to the working dir).")
    text_field: str = Field("text", description="Field holding the text in .jsonl records.")
    text_column: str = Field("text", description="Column holding the text in .parquet files.")
    encoding_errors: Literal["strict", "replace"] = Field(
        "strict", description="strict: refuse invalid UTF-8; replace: substitute U+FFFD."
    )


class HuggingFaceCorpus(_CorpusBase):
    """A `datasets` dataset, loaded only when a config asks for it."""

    source: Literal["huggingface"]
    dataset: str = Field(description="Hub id or local path given to datasets.load_dataset.")
    config: str | None = Field(None, description="Dataset configuration name.")
    split: str = Field("train", description="Dataset split to read.")
    text_field: str = Field("text", description="Field holding the text.")
    revision: str | None = Field(None, description="Dataset revision (branch, tag or commit).")
    streaming: bool = Field(False, description="Stream instead of downloading the whole split.")


Corpus = Annotated[SotuCorpus | LocalCorpus | HuggingFaceCorpus, Field(discriminator="source")]


class TrainedTokenizer(_Section):
    """A byte-level BPE tokenizer trained here on the corpus's train split."""

    source: Literal["train"]
    name: Name = Field(description="Names the folder data/tokenizers/<name>/.")
    vocab_size: Annotated[int, Field(ge=260, le=1 << 20)] = Field(
        4096, description="Vocabulary size including the end-of-text token."
    )
    min_frequency: Annotated[int, Field(ge=1)] = Field(
        2, description="Minimum pair frequency for a BPE merge."
    )


class PretrainedTokenizer(_Section):
    """A model's own tokenizer, by Hub id or local directory (needs a tokenizer.json)."""

    source: Literal["pretrained"]
    name: Name = Field(description="Names the folder data/tokenizers/<name>/.")
    model: str = Field(description="Hub id (e.g. EleutherAI/pythia-160m) or a local directory.")
    revision: str | None = Field(None, description="Hub revision of the tokenizer.")
    eos_token: str | None = Field(
        None, description="End-of-text token; default: the tokenizer's own, else <|endoftext|>."
    )


Tokenizer = Annotated[TrainedTokenizer | PretrainedTokenizer, Field(discriminator="source")]


class DataSettings(_Section):
    """How documents become fixed-length token sequences."""

    seq_len: Annotated[int, Field(ge=2, le=1 << 16)] = Field(
        128, description="Tokens per sequence."
    )
    max_train_sequences: Annotated[int, Field(gt=0)] | None = Field(
        None, description="Keep at most this many train sequences (a seeded sample)."
    )
    max_eval_sequences: Annotated[int, Field(gt=0)] | None = Field(
        None, description="Keep at most this many eval sequences (a seeded sample)."
    )
    bigram_tokens: Annotated[int, Field(gt=0)] | None = Field(
        None,
        description="Count the bigram statistics over this many tokens (whole seq_len sequences) "
        "of the train documents, streamed from the corpus source past corpus.max_documents, "
        "apart from the train and eval sequences (the paper: 1,280,000,000 = 10M x 128); null: "
        "over the train sequences.",
    )

    @model_validator(mode="after")
    def _bigram_tokens_hold_a_sequence(self) -> DataSettings:
        if self.bigram_tokens is not None and self.bigram_tokens < self.seq_len:
            raise ValueError(
                f"data.bigram_tokens ({self.bigram_tokens}) is less than one sequence of "
                f"data.seq_len ({self.seq_len}); raise it or set it to null"
            )
        return self


# ------------------------------------------------------------------------------- models

_LAMBDA_LABEL = re.compile(r"^(neginf|inf|0|[1-9](e[1-9][0-9]*)?)$")


def lambda_value(label: str) -> float:
    """The λ a label stands for: '0', '5', '1e1' (10), '5e2' (500), 'inf', 'neginf'."""
    if label == "neginf":
        return -math.inf
    return float(label)


def lambda_label(value: float) -> str:
    """The canonical label of a λ value (10 -> '1e1', 500 -> '5e2'; others as written)."""
    if value == 0:
        return "0"
    if value == math.inf:
        return "inf"
    if value == -math.inf:
        return "neginf"
    exponent = math.floor(math.log10(abs(value))) if value > 0 else 0
    digit = value / 10**exponent if value > 0 else value
    if value > 0 and exponent >= 0 and float(digit).is_integer() and 1 <= digit <= 9:
        return f"{int(digit)}e{exponent}" if exponent else str(int(digit))
    return str(value)


def check_lambda_label(label: Any) -> Any:
    if isinstance(label, str) and not _LAMBDA_LABEL.match(label):
        raise ValueError(
            f"λ label {label!r} is not canonical: write a digit 1-9 with an optional exponent "
            "('5', '1e1', '5e2'), '0', 'inf' or 'neginf', quoted"
        )
    return label


LambdaLabel = Annotated[str, AfterValidator(check_lambda_label)]


def checkpoint_steps(total: int, count: int) -> list[int]:
    """`count` log-spaced steps from 0 to `total` (0 and `total` included, all distinct)."""
    count = min(count, total + 1)
    steps = {0, total, *(int(s) for s in np.round(np.geomspace(1, total, num=count - 1)))}
    candidate = 1
    while len(steps) < count:  # rounding merged some small steps: fill with the smallest unused
        steps.add(candidate)
        candidate += 1
    return sorted(steps)


class PretrainSettings(_Section):
    """Pretraining of embedded models (AdamW, linear warmup then cosine decay, seeded)."""

    steps: Annotated[int, Field(ge=1)] = Field(5000, description="Optimizer steps.")
    batch_size: Annotated[int, Field(ge=1)] = Field(16, description="Sequences per step.")
    lr: Annotated[Number, Field(gt=0)] = Field(2e-3, description="Peak learning rate.")
    warmup_steps: Annotated[int, Field(ge=0)] = Field(200, description="Linear warmup steps.")
    min_lr_ratio: Annotated[Number, Field(ge=0, le=1)] = Field(
        0.1, description="Final learning rate as a fraction of the peak (cosine decay)."
    )
    weight_decay: Annotated[Number, Field(ge=0)] = Field(0.1, description="AdamW weight decay.")
    checkpoints: Annotated[int, Field(ge=6)] = Field(
        8, description="Log-spaced checkpoints saved as step-<N>/ (step 0 included)."
    )
    eval_every: Annotated[int, Field(ge=1)] = Field(
        250, description="Steps between eval-loss measurements."
    )
    eval_sequences: Annotated[int, Field(ge=1)] = Field(
        512, description="Eval sequences used for each eval-loss measurement."
    )

    @property
    def checkpoint_steps(self) -> list[int]:
        """The steps saved as step-<N>/."""
        return checkpoint_steps(self.steps, self.checkpoints)


class EmbeddedModel(_Section):
    """A GPT-NeoX (Pythia architecture) model trained from scratch by the pretrain stage."""

    source: Literal["embedded"]
    layers: Annotated[int, Field(ge=1)] = Field(description="Transformer blocks.")
    d_model: Annotated[int, Field(ge=4)] = Field(description="Residual stream width.")
    heads: Annotated[int, Field(ge=1)] = Field(description="Attention heads.")
    d_ff: Annotated[int, Field(ge=1)] | None = Field(None, description="MLP width; 4·d_model.")
    rotary_pct: Annotated[Number, Field(gt=0, le=1)] = Field(
        0.25, description="Fraction of each head's dimensions with rotary embeddings (Pythia)."
    )
    rotary_base: Annotated[Number, Field(gt=0)] = Field(10000.0, description="Rotary base.")
    pretrain: PretrainSettings = Field(default_factory=PretrainSettings)

    @property
    def final_step(self) -> int:
        """The training step of the model's own (final) weights."""
        return self.pretrain.steps

    @model_validator(mode="after")
    def _heads_divide_width(self) -> EmbeddedModel:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by heads {self.heads}")
        return self


def _has_step_field(template: str) -> str:
    if "{step}" not in template:
        raise ValueError("must contain '{step}' where the step number goes, e.g. 'step{step}'")
    return template


class HuggingFaceModel(_Section):
    """A model from the Hugging Face Hub, by id and revision."""

    source: Literal["huggingface"]
    id: str = Field(description="Hub id, e.g. EleutherAI/pythia-160m.")
    revision: str = Field("main", description="Branch, tag or commit (e.g. step143000).")
    checkpoint_revision: Annotated[str, AfterValidator(_has_step_field)] = Field(
        "step{step}",
        description="The revision holding the checkpoint of a training step, with {step} "
        "standing for the step (Pythia's branches: step{step}).",
    )
    checkpoint_revisions: dict[Annotated[int, Field(ge=0)], str] = Field(
        default_factory=dict,
        description="Revisions of steps whose names are not a pattern of the step alone "
        "(OLMo-2: stage1-step1000-tokens3B); they win over checkpoint_revision.",
    )
    trust_remote_code: bool = Field(
        False, description="Allow the model's own code from the Hub (off unless you trust it)."
    )

    def revision_of(self, step: int) -> str:
        """The revision holding the checkpoint of a training step."""
        return self.checkpoint_revisions.get(step) or self.checkpoint_revision.format(step=step)

    @property
    def final_step(self) -> int | None:
        """The step of `revision` when it is one of the checkpoint revisions (else unknown)."""
        for step, revision in self.checkpoint_revisions.items():
            if revision == self.revision:
                return step
        pattern = re.escape(self.checkpoint_revision).replace(r"\{step\}", r"(\d+)")
        found = re.fullmatch(pattern, self.revision)
        return int(found.group(1)) if found else None


class LocalModel(_Section):
    """A directory written by `save_pretrained` (GPT-NeoX or GPT-2)."""

    source: Literal["local"]
    path: str = Field(description="The model directory.")

    @property
    def final_step(self) -> None:
        """A local folder has no training steps."""
        return None


Model = Annotated[EmbeddedModel | HuggingFaceModel | LocalModel, Field(discriminator="source")]


# -------------------------------------------------------------------------------- masks


def _unique_labels(labels: list[str]) -> list[str]:
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"each λ label may appear once; repeated: {', '.join(repeated)}")
    return labels


LambdaGrid = Annotated[list[LambdaLabel], Field(min_length=1), AfterValidator(_unique_labels)]


class LambdaSettings(_Section):
    """The λ grid of each target; one mask is trained per model × target × λ."""

    bigram: LambdaGrid = Field(
        description="λ labels for masks trained towards bigram outputs ('neginf' keeps all, "
        "'inf' keeps nothing: the baselines)."
    )
    full: LambdaGrid = Field(
        description="λ labels for 'optimal pruning' masks trained towards the full model "
        "(the paper leaves out 0)."
    )
    unigram: LambdaGrid | None = Field(
        None,
        description="λ labels for masks trained towards the unigram distribution P(next) (the "
        "n = 1 subnetwork; must include '0'). null: none.",
    )
    trigram: LambdaGrid | None = Field(
        None,
        description="λ labels for masks trained towards trigram outputs P(next | previous two) "
        "(n = 3; must include '0'; needs the ngram_stats stage's counts). null: none.",
    )

    def grids(self) -> dict[str, list[str]]:
        """Every configured target's λ labels, the n-gram targets in order of n, then `full`."""
        grids = {"unigram": self.unigram, "bigram": self.bigram, "trigram": self.trigram}
        return {t: g for t, g in grids.items() if g is not None} | {"full": self.full}


def _finite_labels(labels: list[str]) -> list[str]:
    if {"inf", "neginf"} & set(labels):
        raise ValueError("checkpoint masks are trained: use finite λ labels (no inf or neginf)")
    return labels


def _unique_steps(steps: list[int]) -> list[int]:
    if len(set(steps)) != len(steps):
        raise ValueError("each step may appear once")
    return sorted(steps)


class CheckpointSettings(_Section):
    """Bigram masks across pretraining checkpoints (the paper's §4) and the Table 2 controls."""

    models: Annotated[list[Name], Field(min_length=1)] = Field(
        description="Models analysed across checkpoints: embedded models (their saved "
        "step-<N>/ folders) or Hub models (revisions named by checkpoint_revision)."
    )
    steps: Annotated[
        list[Annotated[int, Field(ge=0)]], Field(min_length=1), AfterValidator(_unique_steps)
    ] = Field(
        description="Training steps analysed; embedded models must have saved each one. "
        "Include 0 for the random-initialisation controls."
    )
    lambdas: Annotated[LambdaGrid, AfterValidator(_finite_labels)] = Field(
        description="λ labels of the bigram masks trained at every checkpoint (include '0' for "
        "the controls)."
    )
    budgets: Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)] = Field(
        default_factory=lambda: [10_000, 100_000],
        description="Active-parameter budgets at which each checkpoint's fitted r is reported "
        "(the paper: 500K, 1M, 10M).",
    )
    duplicate_steps: Literal["stop", "drop"] = Field(
        "stop",
        description="When two steps of a Hub model serve identical weight files (a branch "
        "holding another step's weights, found by fetch): stop the run, or drop them (each "
        "group keeps its final or latest step; the checkpoint analysis leaves the others out "
        "and the report names them).",
    )


def _reference_source(text: str) -> str:
    from bigram_subnetworks.masks.reference import check_source_text  # the hf:// syntax

    return check_source_text(text)


ReferenceSource = Annotated[str, AfterValidator(_reference_source)]
ReferenceMasks = dict[Name, Annotated[dict[LambdaLabel, ReferenceSource], Field(min_length=1)]]


class StabilitySettings(_Section):
    """The paper's loss-stability check: a loss spike must be recovered before training ends."""

    window: Annotated[int, Field(ge=1)] = Field(10, description="Steps in the reference mean.")
    abs_jump: Annotated[Number, Field(gt=0)] = Field(0.25, description="Spike: loss > mean + this.")
    rel_jump: Annotated[Number, Field(gt=1)] = Field(1.25, description="Spike: loss > mean × this.")
    recovery_margin: Annotated[int, Field(ge=0)] = Field(
        100, description="The loss must be back at the mean this many steps before the end."
    )
    attempts: Annotated[int, Field(ge=1)] = Field(
        3, description="Training attempts (each on a new shuffle) before giving up."
    )


class MaskSettings(_Section):
    """Continuous-sparsification mask training (model × target × λ)."""

    lr: Annotated[Number, Field(gt=0)] = Field(5e-5, description="AdamW learning rate.")
    weight_decay: Annotated[Number, Field(ge=0)] = Field(0.01, description="AdamW weight decay.")
    temp_increase: Annotated[Number, Field(ge=1)] = Field(
        1.001, description="The sigmoid temperature is multiplied by this after every step."
    )
    batch_size: Annotated[int, Field(ge=1)] = Field(32, description="Sequences per step.")
    grad_accumulation: Annotated[int, Field(ge=1)] = Field(
        1, description="Micro-batches per step (the batch is split into this many)."
    )
    max_steps: Annotated[int, Field(ge=1)] = Field(15000, description="Step cap per attempt.")
    stop_fraction: Annotated[Number, Field(gt=0, lt=1)] = Field(
        0.01, description="Stop once undecided entries (σ in [0.1, 0.9]) < this × entries > 0.9."
    )
    max_sequences: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Use at most this many train sequences (the paper: 500K)."
    )
    save_every: Annotated[int, Field(ge=1)] = Field(
        200, description="Steps between resumable training states."
    )
    stability: StabilitySettings = Field(default_factory=StabilitySettings)
    bf16: bool = Field(False, description="bf16 autocast on CUDA (ignored on CPU).")


# ------------------------------------------------------------------------------ analyses


class AnalysisSettings(_Section):
    """Evaluation of the trained masks and the choice of the subnetworks analysed further."""

    eval_sequences: Annotated[int, Field(ge=2)] | None = Field(
        2000, description="Eval sequences used to evaluate every mask (null: all of them)."
    )
    batch_size: Annotated[int, Field(ge=1)] = Field(32, description="Sequences per forward pass.")
    selection_tolerance: Annotated[Number, Field(ge=0)] = Field(
        0.04,
        description="Select the sparsest bigram mask whose r is within this of the λ = 0 mask's.",
    )
    overlap_draws: Annotated[int, Field(ge=1)] = Field(
        10_000, description="Null draws of the overlap test (within-block hypergeometric)."
    )
    residual_sequences: Annotated[int, Field(ge=8)] = Field(
        512,
        description="Eval sequences for the residual-stream analyses: the linear maps are fitted "
        "on a seeded three quarters and every number derived from them (token recall, the "
        "layer-0 linear-map r) is scored on the held-out quarter; the paper fits on 1,000 "
        "sequences.",
    )
    bootstrap_resamples: Annotated[int, Field(ge=100)] = Field(
        1000,
        description="Seeded bootstrap resamples of the eval sequences (whole sequences, not "
        "tokens) behind the 95% percentile interval of every correlation r (masks, full models, "
        "checkpoints, controls, the linear map); verdicts that compare two r values use them.",
    )
    prompts: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] = Field(
        default_factory=lambda: ["This is a sentence that"],
        description="Prompts continued under every ablation condition (the paper's Table 4).",
    )
    max_new_tokens: Annotated[int, Field(ge=1)] = Field(
        32, description="Tokens generated per prompt."
    )
    temperature: Annotated[Number, Field(gt=0)] = Field(
        0.3, description="Sampling temperature of the sampled generations (greedy ones too)."
    )
    min_context_count: Annotated[int, Field(ge=1)] = Field(
        1000,
        description="Diagnostic beside the r > 0.95 verdict: the r over eval positions whose "
        "current token occurred at least this many times as a context in train (and whose bigram "
        "was counted), shown with the share of positions it covers; it never decides a verdict.",
    )


class Config(_Section):
    """One run of the workflow."""

    run: Name = Field(description="Run name: outputs go to results/<run>/.")
    seed: Annotated[int, Field(ge=0, lt=2**32)] = Field(0, description="Seed for every stage.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where torch stages run; auto: CUDA when available, else CPU."
    )
    threads: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="CPU threads of every torch job (a thread count changes results in their "
        "last bits, so it belongs to the config). null: the cores Snakemake gives the job. "
        "Small models run fastest on 1 thread each, one job per core.",
    )
    hub_cache: str = Field(
        "data/hub",
        description="Hugging Face cache (HF_HUB_CACHE) the fetch stage fills with every Hub "
        "model and checkpoint revision; every other job reads it offline.",
    )
    corpus: Corpus
    tokenizer: Tokenizer
    data: DataSettings = Field(default_factory=DataSettings)
    models: dict[Name, Model] = Field(
        default_factory=dict, description="Models by name: embedded, huggingface or local."
    )
    masks: MaskSettings = Field(
        default_factory=MaskSettings, description="Mask-training hyperparameters (the paper's)."
    )
    lambdas: LambdaSettings | None = Field(None, description="λ grids; required with models.")
    checkpoints: CheckpointSettings | None = Field(
        None, description="Checkpoint trajectories and Table 2 controls (null: not run)."
    )
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    reference_masks: ReferenceMasks | None = Field(
        None,
        description="The paper authors' released masks to compare this run's masks with: model "
        "name -> {λ label: a local subnetwork_dict_lambda<λ>.pickle or "
        "hf://<owner>/<repo>[@<revision>][/<file>] (the file defaults to the authors' name for "
        "the λ)}, e.g. {pythia-160m: {'1e1': hf://tylerachang/bigram-subnetworks-pythia-160m}}. "
        "The reference_mask stage imports each (Hub files into hub_cache); the overlap stage "
        "compares them with the model's masks. null: none.",
    )

    @model_validator(mode="after")
    def _references_name_fetched_models(self) -> Config:
        for name in self.reference_masks or {}:
            spec = self.models.get(name)
            if spec is None:
                raise ValueError(f"reference_masks: {name!r} is not one of the configured models")
            if isinstance(spec, EmbeddedModel):
                raise ValueError(
                    f"reference_masks: {name!r} is an embedded model (trained here); the authors' "
                    "masks are of Hub models (Pythia, GPT-2): configure one as huggingface or local"
                )
        return self

    @model_validator(mode="after")
    def _names_do_not_collide(self) -> Config:
        if "__" in self.corpus.name or "__" in self.tokenizer.name:
            raise ValueError("corpus and tokenizer names must not contain '__'")
        if self.models and self.lambdas is None:
            raise ValueError("lambdas: required when models are configured")
        for target, labels in (
            self.lambdas.grids() if self.models and self.lambdas else {}
        ).items():
            if target != "full" and "0" not in labels:
                raise ValueError(
                    f"lambdas.{target}: add '0': λ selection compares every {target} mask with "
                    "λ = 0's"
                )
        if self.tokenizer.source == "train":
            others = [name for name, spec in self.models.items() if spec.source != "embedded"]
            if others:
                raise ValueError(
                    f"tokenizer: a tokenizer trained here does not match the vocabulary of "
                    f"{others[0]}; use the model's own (tokenizer.source: pretrained, "
                    "tokenizer.model: its id or folder)"
                )
        if self.checkpoints is not None:
            if 0 not in self.checkpoints.steps or "0" not in self.checkpoints.lambdas:
                raise ValueError(
                    "checkpoints: include step 0 in steps and '0' in lambdas (the Table 2 "
                    "controls compare λ = 0 masks of the random initialisation)"
                )
            for name in self.checkpoints.models:
                _check_checkpoints(name, self.models.get(name), self.checkpoints.steps)
            missing = [
                label
                for label in self.checkpoints.lambdas
                if self.lambdas is None or label not in self.lambdas.bigram
            ]
            if missing:
                raise ValueError(
                    f"checkpoints.lambdas: {missing} not in lambdas.bigram; the final checkpoint "
                    "reuses the main grid's masks, so add them there"
                )
        return self


def _check_checkpoints(name: str, spec: Model | None, steps: list[int]) -> None:
    where = f"checkpoints.models: {name!r}"
    if spec is None:
        raise ValueError(f"{where} is not one of the configured models")
    if isinstance(spec, LocalModel):
        raise ValueError(f"{where} is a local model, which has no checkpoints")
    if isinstance(spec, EmbeddedModel):
        missing = sorted(set(steps) - set(spec.pretrain.checkpoint_steps))
        if missing:
            raise ValueError(
                f"{where} saves no checkpoint at step(s) {missing}; it saves "
                f"{spec.pretrain.checkpoint_steps} (pretrain.steps and pretrain.checkpoints)"
            )


# --------------------------------------------------------------------------- error messages

_UNION_TAGS = {"sotu", "local", "huggingface", "train", "pretrained", "embedded"}


def _field_path(loc: tuple[Any, ...]) -> tuple[str, ...]:
    """Drop the union tags pydantic inserts after discriminated fields (corpus.<tag>.path)."""
    parts: list[str] = []
    for item in loc:
        at_union = parts in (["corpus"], ["tokenizer"]) or (
            len(parts) == 2 and parts[0] == "models"
        )
        if at_union and item in _UNION_TAGS:
            continue
        parts.append(str(item))
    return tuple(parts)


def _members(annotation: Any) -> list[Any]:
    """The types inside Annotated/Union/Optional annotations."""
    if get_origin(annotation) is Annotated:
        return _members(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return [m for arg in get_args(annotation) for m in _members(arg)]
    return [annotation]


def _section_of(annotation: Any, raw: Any) -> type[BaseModel] | None:
    """The section model an annotation stands for, choosing union members by `source`."""
    models = [m for m in _members(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]
    if len(models) == 1:
        return models[0]
    source = raw.get("source") if isinstance(raw, dict) else None
    for model in models:
        field = model.model_fields.get("source")
        if field is not None and source in get_args(field.annotation):
            return model
    return None


def _model_at(path: tuple[str, ...], raw: Any) -> type[BaseModel] | None:
    """The section model at a dotted path of the raw config (None where unknown)."""
    model: type[BaseModel] | None = Config
    index = 0
    while index < len(path):
        field = model.model_fields.get(path[index]) if model else None
        if field is None:
            return None
        raw = raw.get(path[index]) if isinstance(raw, dict) else None
        annotation = field.annotation
        if get_origin(annotation) is dict:  # models: {name: entry}
            index += 1
            if index == len(path):
                return None
            raw = raw.get(path[index]) if isinstance(raw, dict) else None
            annotation = get_args(annotation)[1]
        model = _section_of(annotation, raw)
        index += 1
    return model


_EXPECTED = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "dict_type": "expected a mapping of keys to values",
    "model_type": "expected a mapping of keys to values",
    "list_type": "expected a list",
    "string_pattern_mismatch": "expected a name of letters, digits, '.', '_' or '-'",
}


def _describe(error: dict[str, Any], raw: dict[str, Any]) -> str:
    path = _field_path(error["loc"])
    where = ".".join(path) if path else "config"
    kind = error["type"]
    ctx = error.get("ctx", {})
    got = f", got {error['input']!r}"
    if kind == "missing":
        return f"{where}: required key is missing"
    if kind == "extra_forbidden":
        parent = _model_at(path[:-1], raw)
        allowed = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(path[-1], allowed, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(allowed)}"
        return f"{where}: unknown key; {hint}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = ctx.get("expected_tags", "")
        if kind == "union_tag_not_found":
            return f"{where}.source: required key is missing; expected one of {tags}"
        return f"{where}.source: expected one of {tags}, got {ctx.get('tag')!r}"
    if kind == "literal_error":
        return f"{where}: expected one of {ctx.get('expected')}{got}"
    if kind == "string_type" and "lambdas" in path and isinstance(error["input"], int | float):
        return f"{where}: λ labels are strings: quote it: '{lambda_label(error['input'])}'"
    if kind in _EXPECTED:
        return f"{where}: {_EXPECTED[kind]}{got}"
    message = error["msg"].replace("Input should be", "expected").replace("Value error, ", "")
    scalar = not isinstance(error["input"], dict | list)
    if not path:  # a rule between fields: its message names them
        return message
    return f"{where}: {message[0].lower()}{message[1:]}{got if scalar else ''}"


def validate_config(raw: Any, source: str = "config") -> Config:
    """Validate a parsed config mapping; raise ConfigError with one line per problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {raw!r}")
    _reject_nonfinite(raw, (), source)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(err, raw) for err in exc.errors()]
        raise ConfigError(f"{source}: " + f"\n{source}: ".join(lines)) from None


def _reject_nonfinite(node: Any, path: tuple[str, ...], source: str) -> None:
    """NaN is never a meaningful setting; catch it before pydantic's comparisons let it through."""
    if isinstance(node, dict):
        for key, value in node.items():
            _reject_nonfinite(value, (*path, str(key)), source)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _reject_nonfinite(value, (*path, str(index)), source)
    elif isinstance(node, float) and math.isnan(node):
        raise ConfigError(f"{source}: {'.'.join(path)}: expected a number, got nan")


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; pass an existing file") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}; fix the syntax") from None
    return validate_config(raw, source=str(path))


def json_schema() -> dict[str, Any]:
    """The JSON schema of the config (exported to config/schema.json)."""
    schema = Config.model_json_schema()
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["title"] = "bigram-subnetworks run configuration"
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


# ------------------------------------------------------------------- the effective config

EFFECTIVE_HEADER = (
    "# The effective config of run {run!r}: validated, every default filled in, written by bsn.\n"
    "# Edit the config file you ran (or pass --config overrides), not this file.\n"
)


def effective_config_text(cfg: Config) -> str:
    """The effective config as YAML (canonical: the same config always gives the same bytes)."""
    body = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    return EFFECTIVE_HEADER.format(run=cfg.run) + body


def write_effective_config(cfg: Config, path: Path | str) -> bool:
    """Write the effective config atomically unless the file already holds it; True if written."""
    from bigram_subnetworks.io import atomic_outputs

    path, text = Path(path), effective_config_text(cfg)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    with atomic_outputs(path) as (temp,):
        temp.write_text(text, encoding="utf-8")
    return True


def run_stage(cfg: Config, *, output: Path) -> None:
    """The `config` stage (DVC): write the run's effective config (the CLI checked the config
    deeply first, see validation.py)."""
    write_effective_config(cfg, output)


def typed_overrides(overrides: Any) -> Any:
    """Snakemake's `--config key={...}` hands nested values over as strings ('500', '0.02'):
    whole and decimal numbers among them become numbers again (λ labels stay strings)."""
    if isinstance(overrides, dict):
        return {
            key: value
            if key in ("lambdas", *LambdaSettings.model_fields)
            else typed_overrides(value)
            for key, value in overrides.items()
        }
    if isinstance(overrides, list):
        return [typed_overrides(value) for value in overrides]
    if isinstance(overrides, str):
        if re.fullmatch(r"[+-]?[0-9]+", overrides.strip()):
            return int(overrides)
        if re.fullmatch(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", overrides.strip()):
            return float(overrides)
    return overrides


def merge_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` merged recursively into `base` (mappings merge, other values replace)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_overrides(merged[key], value)
        else:
            merged[key] = value
    return merged


# ------------------------------------------------------------ what a stage may read of it


class UndeclaredConfigKey(AttributeError):
    """A stage read a config key its registry entry does not declare (a bug in the stage)."""


class ConfigView:
    """Read-only access to the declared keys of a config section; any other key raises.

    Stages receive their config through this view, so a stage that reads a key it does not
    declare in `stages.py` fails at once instead of silently missing reruns.
    """

    def __init__(self, value: Any, allowed: dict[str, Any], where: str, stage: str) -> None:
        self._value, self._allowed, self._where, self._stage = value, allowed, where, stage

    def _child(self, name: str) -> Any:
        if name not in self._allowed:
            key = f"{self._where}.{name}" if self._where else name
            raise UndeclaredConfigKey(
                f"stage {self._stage!r} reads config key {key!r}, which its entry in stages.py "
                "does not declare"
            )
        sub = self._allowed[name]
        value = self._value[name] if isinstance(self._value, dict) else getattr(self._value, name)
        if sub is None or value is None:
            return value
        where = f"{self._where}.{name}" if self._where else name
        return ConfigView(value, sub, where, self._stage)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._child(name)

    def __getitem__(self, name: str) -> Any:
        return self._child(name)

    def get(self, name: str, default: Any = None) -> Any:
        return self._child(name) if name in self._allowed else default

    def __contains__(self, name: str) -> bool:
        return name in self._allowed

    def __iter__(self) -> Any:
        return iter(self._allowed)


def restrict(cfg: Config, keys: list[list[str]], stage: str) -> Config:
    """A view of `cfg` in which only `keys` (as path parts; [] = everything) can be read."""
    if any(not parts for parts in keys):
        return cfg
    tree: dict[str, Any] = {}
    for parts in keys:
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if node is None:
                break
        else:
            node[parts[-1]] = None
    return ConfigView(cfg, tree, "", stage)  # type: ignore[return-value]
