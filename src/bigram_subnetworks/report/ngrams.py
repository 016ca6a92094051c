"""The report's section on subnetworks of several n-gram orders (`ngrams.parquet`, issue #24):
how large each order's selected mask is, how far the orders' masks nest, and where they lie.

Beyond the paper: its claims, and this report's verdicts, stay about bigrams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from bigram_subnetworks.artifacts import NGRAMS
from bigram_subnetworks.io import read_parquet
from bigram_subnetworks.report.html import Table

ATTENTION_KINDS = ("Q", "K", "V", "O")
MLP_KINDS = ("MLP-in", "MLP-out")
SUBJECT = ["model", "target", "order", "lambda"]
PAIR = [*SUBJECT, "other_target", "other_order", "other_lambda"]
CELL = [*SUBJECT, "layer", "kind"]
BEYOND = (
    "Beyond the paper, which studies bigrams only: the paper's claims and this report's verdicts "
    "are about bigram subnetworks."
)


@dataclass(frozen=True)
class NgramResults:
    """`ngrams.parquet` as one wide frame per analysis (one column per metric)."""

    sparsity: pl.DataFrame  # model, target, order, lambda, kept, kept_fraction, ..., r
    nesting: pl.DataFrame  # model, target (A), ..., other_target (B), ..., share, ratio, ...
    location: pl.DataFrame  # model, target, order, lambda, layer, kind, kept, size, share, ...

    def attention_share(self) -> pl.DataFrame:
        """Per model × order: the share of the mask's kept weights in Q, K, V and O."""
        return (
            self.location.filter(pl.col("kind").is_in(ATTENTION_KINDS))
            .group_by(SUBJECT, maintain_order=True)
            .agg(pl.col("share").sum().alias("attention_share"))
        )

    def models(self) -> list[str]:
        return list(dict.fromkeys(self.sparsity["model"].to_list()))


def _wide(table: pl.DataFrame, analysis: str, keys: list[str]) -> pl.DataFrame:
    """One analysis's rows with one column per metric, models in run order, then by order (and
    the other order, layer)."""
    rows = table.filter(pl.col("analysis") == analysis)
    if rows.is_empty():
        return pl.DataFrame(schema={key: table.schema[key] for key in keys})
    models = list(dict.fromkeys(table["model"].to_list()))
    wide = rows.pivot(on="metric", index=keys, values="value", aggregate_function=None)
    rank = pl.col("model").replace_strict(models, list(range(len(models))))
    order = [k for k in keys if k in ("order", "other_order", "layer")]
    return wide.sort([rank, *order], maintain_order=True)


def read_ngrams(path: Path | str | None) -> NgramResults | None:
    """The section's data from `ngrams.parquet` (None when the run has no ngrams stage)."""
    if path is None:
        return None
    table = pl.from_arrow(read_parquet(Path(path), columns=NGRAMS.schema.names))
    assert isinstance(table, pl.DataFrame)
    return NgramResults(
        sparsity=_wide(table, "sparsity", SUBJECT),
        nesting=_wide(table, "nesting", PAIR),
        location=_wide(table, "location", CELL),
    )


def _number(value: float | None, spec: str) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return format(value, spec)


def p_text(p: float | None, log10_p: float | None) -> str:
    """An exact p: two significant digits, or a bound by its power of ten where it is below
    what a double holds ('< 10^-2801')."""
    if p is not None and p >= 1e-300:
        return format(p, ".2g")
    if log10_p is None or not math.isfinite(log10_p):
        return "–"
    return f"< 10^{math.ceil(log10_p):d}"


def _order_name(target: str, order: int) -> str:
    return f"{target} (n = {order})"


def sparsity_table(results: NgramResults) -> Table:
    shares = results.attention_share()
    first_mlp = (
        results.location.filter((pl.col("layer") == 0) & pl.col("kind").is_in(MLP_KINDS))
        .group_by(SUBJECT, maintain_order=True)
        .agg(pl.col("share").sum().alias("first_mlp_share"))
    )
    frame = results.sparsity.join(shares, on=SUBJECT, how="left").join(
        first_mlp, on=SUBJECT, how="left"
    )
    rows = [
        {
            "model": row["model"],
            "order": _order_name(row["target"], row["order"]),
            "selected λ": row["lambda"],
            "kept weights": f"{int(row['kept']):,}",
            "kept fraction": _number(row["kept_fraction"], ".2%"),
            "× the bigram mask's": _number(row["kept_ratio_to_bigram"], ".2f"),
            "r with its n-gram model": _number(row["r"], ".3f"),
            "attention share": _number(row["attention_share"], ".1%"),
            "layer-0 MLP share": _number(row["first_mlp_share"], ".1%"),
        }
        for row in frame.iter_rows(named=True)
    ]
    note = (
        f"{BEYOND} Per model and n-gram order, the mask the select stage chose for that order "
        "(the sparsest λ whose r with the order's n-gram surprisal, backed off for unseen "
        "contexts from n = 3 on as in training, is within the selection tolerance of its λ = 0 "
        "mask's). Kept fraction: of the masked weights; × the bigram "
        "mask's: its kept weights over the selected bigram mask's. Attention share: the share "
        "of its kept weights in Q, K, V and O (a model can only see the token two back, as a "
        "trigram needs, through attention)."
    )
    numeric = ("kept weights", "kept fraction", "× the bigram mask's", "r with its n-gram model")
    numeric += ("attention share", "layer-0 MLP share")
    return Table(
        "Beyond bigrams: the subnetwork of each n-gram order", pl.DataFrame(rows), note, numeric
    )


def nesting_table(results: NgramResults) -> Table:
    rows = [
        {
            "model": row["model"],
            "mask A": _order_name(row["target"], row["order"]),
            "inside mask B": _order_name(row["other_target"], row["other_order"]),
            "|A ∧ B|": f"{int(row['both']):,}",
            "|A|": f"{int(row['kept']):,}",
            "|B|": f"{int(row['other_kept']):,}",
            "share of A in B": _number(row["share"], ".3f"),
            "chance share, row / uniform null": (
                f"{_number(row['row_expected_share'], '.3f')} / "
                f"{_number(row['expected_share'], '.3f')}"
            ),
            "× chance, row / uniform null": (
                f"{_number(row['row_ratio'], '.2f')} / {_number(row['ratio'], '.2f')}"
            ),
            "p, row shuffle": _number(row["row_p_value"], ".2g"),
            "p, uniform (exact)": p_text(row["p_exact"], row["log10_p_exact"]),
        }
        for row in results.nesting.iter_rows(named=True)
    ]
    draws = sorted({int(d) for d in results.nesting["draws"]}) if "draws" in results.nesting else []
    resolution = ", ".join(f"1/{d + 1:,}" for d in draws) or "1/(draws + 1)"
    note = (
        f"{BEYOND} For every ordered pair of orders, the share of A's selected mask that B's "
        "keeps too, |A ∧ B| / |A| (1: A nested in B), against the share expected by chance "
        "under the authors' row shuffle (each block's rows permuted) and under uniform redraws "
        "within each block (exact means), and their ratio (× chance: observed over expected "
        "|A ∧ B|, the same for A in B and B in A). p: upper tail of |A ∧ B|, from the row "
        f"shuffle's seeded draws (smallest possible {resolution}) and exact under the uniform "
        "null (a sum of one hypergeometric count per block)."
    )
    numeric = ("|A ∧ B|", "|A|", "|B|", "share of A in B", "p, row shuffle", "p, uniform (exact)")
    return Table(
        "Beyond bigrams: are the orders' subnetworks nested?", pl.DataFrame(rows), note, numeric
    )


def location_table(results: NgramResults) -> Table:
    kinds = [k for k in (*ATTENTION_KINDS, *MLP_KINDS) if k in set(results.location["kind"])]
    rows = []
    layers = results.location.group_by([*SUBJECT, "layer"], maintain_order=True).agg(
        pl.col("kind"), pl.col("share")
    )
    for row in layers.iter_rows(named=True):
        share = dict(zip(row["kind"], row["share"], strict=True))
        rows.append(
            {
                "model": row["model"],
                "order": _order_name(row["target"], row["order"]),
                "layer": str(row["layer"]),
                **{kind: _number(share.get(kind), ".1%") for kind in kinds},
                "attention": _number(sum(share.get(k, 0.0) for k in ATTENTION_KINDS), ".1%"),
                "MLP": _number(sum(share.get(k, 0.0) for k in MLP_KINDS), ".1%"),
            }
        )
    note = (
        f"{BEYOND} Each order's selected mask: the share of its kept weights in each layer × "
        "block (a row per layer; a model's shares over all its layers and blocks sum to 100%). "
        "'–': the mask keeps nothing."
    )
    numeric = (*kinds, "attention", "MLP")
    return Table(
        "Beyond bigrams: where each order's subnetwork lies", pl.DataFrame(rows), note, numeric
    )


def ngram_tables(results: NgramResults | None) -> list[Table]:
    """The section's tables (none when the run has no ngrams stage)."""
    if results is None:
        return []
    return [sparsity_table(results), nesting_table(results), location_table(results)]
