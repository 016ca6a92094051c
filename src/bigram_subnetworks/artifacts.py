"""Every artifact of the pipeline, declared once: its path template and, for tables, its schema.

Stages, the stage registry (`stages.py`), both front-ends, the report and the tests take paths and
schemas from here; nothing else spells them out. Templates use `{placeholders}`:

- `{run}`: the run name (`results/<run>/`);
- `{corpus}`, `{tokenizer}`, `{data}`: keys of the shared data folders, each a readable name plus a
  short hash of the settings that produce it (see `stages.data_keys`), so two configs share data
  when they agree and never overwrite each other's when they differ;
- `{model}`: a model name, or for masks a *model key*: the name, optionally followed by
  `+<variant>` for masks of a checkpoint (`neox-4x96+step-292`) or a control model
  (`neox-4x96+random-body`);
- `{target}`, `{lam}`: a mask's target (bigram | full) and λ label.

Torch-free: importing this module never imports torch or transformers.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa


@dataclass(frozen=True)
class Artifact:
    """A file (or, with `files`, a folder whose listed files the front-ends track)."""

    path: str
    help: str
    files: tuple[str, ...] = ()  # a folder: the files in it that rules depend on
    dvc_folder: bool = False  # DVC tracks the whole folder (e.g. model weights + checkpoints)
    schema: pa.Schema | None = None

    @property
    def is_folder(self) -> bool:
        return bool(self.files)

    def fields(self) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(self.path) if name}

    def render(self, **values: str) -> str:
        """The path with every placeholder filled in."""
        return self.path.format(**values)

    def tracked(self, **values: str) -> list[str]:
        """The files a front-end tracks for this artifact."""
        path = self.render(**values)
        return [f"{path}/{name}" for name in self.files] if self.files else [path]

    def parse(self, path: Path | str) -> dict[str, str]:
        """The placeholder values in a path named by this template. Only the part after the
        template's last fixed folder must match (`.../m/bigram/lambda-0.safetensors` is a mask
        wherever it lies); ValueError otherwise."""
        parts = self.path.split("/")
        fixed = [i for i, part in enumerate(parts) if "{" not in part]
        start = fixed[-1] + 1 if fixed and fixed[-1] < len(parts) - 1 else 0
        pattern = ""
        for literal, name, _, _ in string.Formatter().parse("/".join(parts[start:])):
            pattern += re.escape(literal)
            if name:
                pattern += f"(?P<{name}>[^/]+)"
        found = re.search(f"(?:^|/){pattern}$", Path(path).as_posix())
        if found is None:
            raise ValueError(f"{path} does not end like {self.path}")
        return found.groupdict()


def _schema(*columns: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema(list(columns))


# --------------------------------------------------------------------------- shared data

RUN_CONFIG = Artifact(
    "results/{run}/config.yaml",
    "the effective config of the run (validated, defaults filled in); every stage reads it",
)
DOCUMENTS = Artifact(
    "data/{corpus}/documents.parquet",
    "documents with their split",
    schema=_schema(("doc_id", pa.string()), ("split", pa.string()), ("text", pa.large_string())),
)
CORPUS_MANIFEST = Artifact("data/{corpus}/manifest.json", "source, licence, checksums, counts")
TOKENIZER = Artifact(
    "data/tokenizers/{tokenizer}",
    "the tokenizer folder (tokenizer.json, meta.json)",
    files=("tokenizer.json", "meta.json"),
)
TOKEN_SCHEMA = _schema(("seq_id", pa.uint32()), ("input_ids", pa.list_(pa.uint32())))
TOKENS_TRAIN = Artifact(
    "data/{data}/tokens_train.parquet", "train token sequences", schema=TOKEN_SCHEMA
)
TOKENS_EVAL = Artifact(
    "data/{data}/tokens_eval.parquet", "eval token sequences", schema=TOKEN_SCHEMA
)
TOKENS_META = Artifact("data/{data}/tokens.json", "sequence counts and tokenizer facts")
BIGRAM_STATS = Artifact(
    "data/{data}",
    "the bigram statistics folder (bigrams.parquet, unigrams.parquet, bigrams.json)",
    files=("bigrams.parquet", "unigrams.parquet", "bigrams.json"),
)
BIGRAMS_SCHEMA = _schema(("prev", pa.uint32()), ("next", pa.uint32()), ("count", pa.uint64()))
UNIGRAMS_SCHEMA = _schema(("token", pa.uint32()), ("count", pa.uint64()))
# Mask targets that are n-gram models, by their order n; "full" (distillation) has none. Orders 1
# and 2 are read from BIGRAM_STATS, orders of 3 and more from NGRAM_STATS.
NGRAM_ORDERS: dict[str, int] = {"unigram": 1, "bigram": 2, "trigram": 3}
NGRAM_STATS = Artifact(
    "data/{data}/ngrams-{order}.parquet",
    "(context, next) counts of order n >= 3: context_0 .. context_{n-2}, next, count",
)
NGRAM_META = Artifact("data/{data}/ngrams-{order}.json", "n-gram table facts (order, sizes)")


def ngram_order(target: str) -> int | None:
    """The n-gram order of a mask target (None for "full"); ValueError for an unknown target."""
    if target == "full":
        return None
    if target not in NGRAM_ORDERS:
        raise ValueError(f"unknown mask target {target!r}; expected one of full, {NGRAM_ORDERS}")
    return NGRAM_ORDERS[target]


def ngram_schema(order: int) -> pa.Schema:
    """The NGRAM_STATS columns of an order-n table (oldest context token first)."""
    contexts = [(f"context_{i}", pa.uint32()) for i in range(order - 1)]
    return _schema(*contexts, ("next", pa.uint32()), ("count", pa.uint64()))


# ----------------------------------------------------------------------------- models, masks

MODEL = Artifact(
    "results/{run}/models/{model}",
    "a model folder (model.json; embedded models: final/ and step-<N>/ weights)",
    files=("model.json",),
    dvc_folder=True,
)
MASK = Artifact(
    "results/{run}/masks/{model}/{target}/lambda-{lam}.safetensors",
    "a mask (safetensors, one bool tensor per masked weight)",
)
MASK_LOG = Artifact(
    "results/{run}/masks/{model}/{target}/lambda-{lam}.json", "a mask's training log (JSON)"
)
MASK_CURVE = Artifact(
    "results/{run}/masks/{model}/{target}/lambda-{lam}.curve.csv",
    "a mask's training curve (CSV: step, loss, kept, undecided, temperature; for dvc plots)",
)
VARIANT_SEPARATOR = "+"  # model key = name[+variant]
RANDOM_BODY = "random-body"  # variant: the step-0 body with the trained embeddings (Table 2)

# -------------------------------------------------------------------------------- analyses

CI_LEVEL = 0.95  # two-sided level of every bootstrap interval in the metrics tables

MASK_METRICS = Artifact(
    "results/{run}/metrics/masks.parquet",
    "one row per mask × metric",
    schema=_schema(
        ("model", pa.string()),
        ("target", pa.string()),
        ("lambda", pa.string()),
        ("lambda_value", pa.float64()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ),
)
BLOCKS = Artifact(
    "results/{run}/metrics/blocks.parquet",
    "kept fraction per mask × block (and head)",
    schema=_schema(
        ("model", pa.string()),
        ("target", pa.string()),
        ("lambda", pa.string()),
        ("layer", pa.int32()),
        ("kind", pa.string()),
        ("head", pa.int32()),
        ("kept", pa.int64()),
        ("size", pa.int64()),
        ("fraction", pa.float64()),
        ("param", pa.string()),  # the model's own parameter the block lies in
    ),
)
SELECTION = Artifact("results/{run}/selection.json", "the selected bigram mask and its pair")
OVERLAP = Artifact(
    "results/{run}/metrics/overlap.parquet",
    "overlap of every bigram × optimal mask pair, with two nulls: uniform within block (expected, "
    "ratio, p_value, ...) and the authors' row shuffle (row_*; draws for the selected pair only)",
    schema=_schema(
        ("model", pa.string()),
        ("bigram_lambda", pa.string()),
        ("optimal_lambda", pa.string()),
        ("selected", pa.bool_()),
        ("observed", pa.float64()),
        ("expected", pa.float64()),
        ("expected_sd", pa.float64()),
        ("ratio", pa.float64()),
        ("p_value", pa.float64()),
        ("null_mean", pa.float64()),
        ("null_sd", pa.float64()),
        ("share_a_in_b", pa.float64()),
        ("kept_a", pa.float64()),
        ("kept_b", pa.float64()),
        ("observed_count", pa.int64()),
        ("n_masked", pa.int64()),
        ("draws", pa.int64()),
        ("seed", pa.int64()),
        ("row_expected", pa.float64()),
        ("row_expected_sd", pa.float64()),
        ("row_ratio", pa.float64()),
        ("row_p_value", pa.float64()),
        ("row_null_mean", pa.float64()),
        ("row_null_sd", pa.float64()),
    ),
)
OVERLAP_NULL = Artifact(
    "results/{run}/metrics/overlap_null.parquet",
    "the null draws of each model's selected pair (uniform within block; row shuffle)",
    schema=_schema(
        ("model", pa.string()),
        ("draw", pa.int64()),
        ("overlap", pa.float64()),
        ("row_overlap", pa.float64()),
    ),
)
NGRAMS = Artifact(
    "results/{run}/metrics/ngrams.parquet",
    "the selected masks of every n-gram order compared (analysis.ngrams), one row per model x "
    "analysis x subject x metric: sparsity (kept weights, kept_fraction, kept_ratio_to_bigram, "
    "r) per order; nesting per ordered pair of orders (both, kept, other_kept, share of the "
    "order's mask inside the other's, expected_share and ratio under the uniform null with its "
    "exact p, row_expected_share, row_ratio and row_p_value under the row shuffle, draws); "
    "location per order x layer x block kind (kept, size, share of the mask, fraction)",
    schema=_schema(
        ("model", pa.string()),
        ("analysis", pa.string()),
        ("target", pa.string()),
        ("order", pa.int32()),
        ("lambda", pa.string()),
        ("other_target", pa.string()),
        ("other_order", pa.int32()),
        ("other_lambda", pa.string()),
        ("layer", pa.int32()),
        ("kind", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ),
)
REFERENCE_MASK = Artifact(
    "results/{run}/reference_masks/{model}/lambda-{lam}.safetensors",
    "one of the paper authors' released masks of a model (reference_masks), as a bsn mask file "
    "whose card names its source",
)
REFERENCE_OVERLAP = Artifact(
    "results/{run}/metrics/reference_overlap.parquet",
    "overlap of every configured authors' mask with each of the model's masks: observed, × "
    "chance under both nulls (uniform within block; row shuffle, exact mean) and the share of "
    "each mask inside the other",
    schema=_schema(
        ("model", pa.string()),
        ("reference_lambda", pa.string()),
        ("reference_source", pa.string()),
        ("orig_model_name", pa.string()),
        ("target", pa.string()),
        ("lambda", pa.string()),
        ("observed", pa.float64()),
        ("expected", pa.float64()),
        ("expected_sd", pa.float64()),
        ("ratio", pa.float64()),
        ("p_value", pa.float64()),
        ("row_expected", pa.float64()),
        ("row_expected_sd", pa.float64()),
        ("row_ratio", pa.float64()),
        ("share_run_in_reference", pa.float64()),
        ("share_reference_in_run", pa.float64()),
        ("kept_run", pa.float64()),
        ("kept_reference", pa.float64()),
        ("observed_count", pa.int64()),
        ("n_masked", pa.int64()),
        ("draws", pa.int64()),
        ("seed", pa.int64()),
    ),
)
ABLATIONS = Artifact(
    "results/{run}/metrics/ablations.parquet",
    "surprisal under each ablation condition",
    schema=_schema(
        ("model", pa.string()),
        ("condition", pa.string()),
        ("kept", pa.int64()),
        ("kept_fraction", pa.float64()),
        ("mean_surprisal_bits", pa.float64()),
        ("sd_surprisal_bits", pa.float64()),
        ("lm_loss", pa.float64()),
        ("perplexity", pa.float64()),
        ("tokens", pa.int64()),
    ),
)
GENERATIONS = Artifact(
    "results/{run}/metrics/generations.parquet",
    "prompt continuations under each ablation condition",
    schema=_schema(
        ("model", pa.string()),
        ("condition", pa.string()),
        ("prompt", pa.string()),
        ("decoding", pa.string()),
        ("text", pa.string()),
    ),
)
RESIDUAL = Artifact(
    "results/{run}/metrics/residual.parquet",
    "residual-stream analyses per model × condition × layer",
    schema=_schema(
        ("model", pa.string()),
        ("condition", pa.string()),
        ("metric", pa.string()),
        ("layer", pa.int32()),
        ("layer_b", pa.int32()),
        ("value", pa.float64()),
    ),
)
CHECKPOINTS = Artifact(
    "results/{run}/metrics/checkpoints.parquet",
    "bigram masks across pretraining checkpoints, with power-law fits",
    schema=_schema(
        ("model", pa.string()),
        ("step", pa.int64()),
        ("target", pa.string()),
        ("lambda", pa.string()),
        ("lambda_value", pa.float64()),
        ("budget", pa.int64()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ),
)
# Bootstrap replicates of every r a scoring stage writes (analysis.scoring: the same seeded
# resamples of the same eval sequences in every stage, so differences between any two rows of one
# (resample) are paired); step and budget are null where they do not apply.
REPLICATES_SCHEMA = _schema(
    ("model", pa.string()),
    ("step", pa.int64()),
    ("target", pa.string()),
    ("lambda", pa.string()),
    ("budget", pa.int64()),
    ("metric", pa.string()),
    ("resample", pa.int32()),
    ("value", pa.float64()),
)
MASK_REPLICATES = Artifact(
    "results/{run}/metrics/masks_replicates.parquet",
    "bootstrap replicates of every r of masks.parquet (one row per mask × metric × resample)",
    schema=REPLICATES_SCHEMA,
)
CHECKPOINT_REPLICATES = Artifact(
    "results/{run}/metrics/checkpoints_replicates.parquet",
    "bootstrap replicates of every r and budget estimate of checkpoints.parquet",
    schema=REPLICATES_SCHEMA,
)
CONTROL_REPLICATES = Artifact(
    "results/{run}/metrics/controls_replicates.parquet",
    "bootstrap replicates of the r the controls stage scores (model keys name the variant)",
    schema=REPLICATES_SCHEMA,
)
CONTROLS = Artifact(
    "results/{run}/metrics/controls.parquet",
    "the paper's Table 2 controls",
    schema=_schema(
        ("model", pa.string()),
        ("control", pa.string()),
        ("lambda", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ),
)

# ---------------------------------------------------------------------------------- report

REPORT_FIGURE = Artifact("results/{run}/report/figures/{figure}.png", "a report figure")
# The report's figures: file name ({figure}) -> caption. report.figures draws exactly the names
# the report stage is given (REPORT_FIGURE's paths, from `figure_names`).
REPORT_FIGURES: dict[str, str] = {
    "claims": "The paper's numeric claims on one axis each: the paper's value per model (black, "
    "exact) and this run's (model colours, 95% bootstrap intervals), with the rule's threshold "
    "dashed: full-model r (hollow) and best bigram-mask r (filled) against the r level; the "
    "selected mask's kept fraction against the sparse bound; the bigram/optimal mask overlap "
    "(× chance, row-shuffle null) against the paper's smallest ratio.",
    "sparsity_r": "Bigram surprisal correlation r against active (kept) parameters for every λ; "
    "dashed lines: each full model's own r. Right: optimal (full-model-target) masks, r with "
    "bigram surprisal (solid) and with the full model (dotted). Masks keeping nothing are left "
    "out of the log axis.",
    "block_heatmaps": "Kept fraction of the selected bigram mask per layer × block "
    "(Q, K, V, O, MLP-in, MLP-out), one panel per model.",
    "ablations": "Mean surprisal (bits, ± 1 sd over tokens) under each ablation condition.",
    "overlap": "Null distributions of the overlap of the selected bigram and optimal masks: "
    "uniform redraws within each block (grey, expectation dashed) and the authors' row shuffle "
    "(blue, expectation dotted; the null behind the paper's Table 3 and the p-value shown, with "
    "its resolution), and the observed overlap (red: a line, or an arrow when it lies far beyond "
    "the nulls); last panel: observed/expected ratio per model under both nulls.",
    "rotations": "Median rotation angle of the ridge map from each layer to the input "
    "embeddings and to the output layer: full model, selected bigram mask, random mask.",
    "covariance": "Cross-layer covariance similarity (top direction removed, Frobenius cosine) "
    "for the full model, the selected bigram mask and a random mask.",
    "checkpoints": "Across pretraining checkpoints (log step axis; step 0 drawn apart): the full "
    "model's bigram r and the r of a subnetwork at fixed budgets of active weights (power-law "
    "fits; hollow = extrapolated), with 95% bootstrap intervals and their peaks starred (the r "
    "that matches the paper's regime); then each λ's kept fraction and the share of its mask in "
    "the first MLP layer.",
    "training_curves": "Mask training: target cross-entropy, kept fraction and undecided "
    "fraction per step (the attempt that was kept) for every trained mask; solid: bigram target, "
    "dashed: full-model target.",
    "ngrams": "The selected masks of every n-gram order (beyond the paper, which studies "
    "bigrams). Top left: each order's kept weights per model (log scale; the ratio to the bigram "
    "mask's above each bar). Top right: for every ordered pair of orders, the share of mask A's "
    "kept weights that mask B keeps too (dots; 1 = A nested in B), with the share expected by "
    "chance under the row-shuffle null (blue) and the uniform within-block null (grey). Bottom: "
    "per model, each order's kept weights per layer × block as a share of its mask, and per "
    "order the share in attention (Q, K, V, O) in the title.",
}


def figure_names(has_checkpoints: bool, has_ngrams: bool = False) -> list[str]:
    """The figures a run produces (`checkpoints` only for a config with a checkpoints section,
    `ngrams` only for one with two or more n-gram targets)."""
    present = {"checkpoints": has_checkpoints, "ngrams": has_ngrams}
    return [name for name in REPORT_FIGURES if present.get(name, True)]


REPORT_HTML = Artifact("results/{run}/report/index.html", "the self-contained HTML report")
REPORT_SUMMARY = Artifact("results/{run}/report/summary.md", "the report's numbers in Markdown")
REPORT_PLOT = Artifact("results/{run}/report/plots/{plot}.csv", "data of a DVC plot")
RUN_METRICS = Artifact("results/{run}/metrics.json", "headline numbers (DVC metrics)")


def model_key(model: str, variant: str | None = None) -> str:
    """The key of a model (or of one of its variants) in mask paths: `name[+variant]`."""
    return f"{model}{VARIANT_SEPARATOR}{variant}" if variant else model


def split_model_key(key: str) -> tuple[str, str | None]:
    """(model name, variant or None) of a model key."""
    name, _, variant = key.partition(VARIANT_SEPARATOR)
    return name, variant or None
