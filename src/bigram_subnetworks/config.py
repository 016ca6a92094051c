"""The run configuration: a typed model, validated before any work, with one-line errors.

`params.yaml` (the embedded default) and the files under `config/` are read by Snakemake, DVC and
`bsn` alike. This module is the validator for all three; `config/schema.json` is exported from it.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
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


class Config(_Section):
    """One run of the workflow."""

    run: Name = Field(description="Run name: outputs go to results/<run>/.")
    seed: Annotated[int, Field(ge=0, lt=2**32)] = Field(0, description="Seed for every stage.")
    corpus: Corpus
    tokenizer: Tokenizer
    data: DataSettings = Field(default_factory=DataSettings)

    @model_validator(mode="after")
    def _names_do_not_collide(self) -> Config:
        if "__" in self.corpus.name or "__" in self.tokenizer.name:
            raise ValueError("corpus and tokenizer names must not contain '__'")
        return self

    # Derived paths: the fixed artifact layout of design.md §4.
    @property
    def corpus_dir(self) -> Path:
        return Path("data") / self.corpus.name

    @property
    def tokenizer_dir(self) -> Path:
        return Path("data") / "tokenizers" / self.tokenizer.name

    @property
    def data_dir(self) -> Path:
        return Path("data") / f"{self.corpus.name}__{self.tokenizer.name}"

    @property
    def run_dir(self) -> Path:
        return Path("results") / self.run


# --------------------------------------------------------------------------- error messages

_DISCRIMINATED = {"corpus", "tokenizer"}


def _field_path(loc: tuple[Any, ...]) -> tuple[str, ...]:
    """Drop the union tags pydantic inserts after discriminated fields (corpus.<tag>.path)."""
    parts: list[str] = []
    skip_next = False
    for item in loc:
        if skip_next:
            skip_next = False
            continue
        parts.append(str(item))
        if len(parts) == 1 and item in _DISCRIMINATED:
            skip_next = True
    return tuple(parts)


def _model_at(path: tuple[str, ...], raw: Any) -> type[BaseModel] | None:
    """The section model at a dotted path, choosing union members by the raw `source` value."""
    model: type[BaseModel] = Config
    for part in path:
        field = model.model_fields.get(part)
        if field is None:
            return None
        raw = raw.get(part) if isinstance(raw, dict) else None
        model = _section_class(part, raw)
        if model is None:
            return None
    return model


def _section_class(field: str, raw: Any) -> type[BaseModel] | None:
    source = raw.get("source") if isinstance(raw, dict) else None
    if field == "corpus":
        return {"sotu": SotuCorpus, "local": LocalCorpus, "huggingface": HuggingFaceCorpus}.get(
            source
        )
    if field == "tokenizer":
        return {"train": TrainedTokenizer, "pretrained": PretrainedTokenizer}.get(source)
    if field == "data":
        return DataSettings
    return None


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
    if kind in _EXPECTED:
        return f"{where}: {_EXPECTED[kind]}{got}"
    message = error["msg"].replace("Input should be", "expected").replace("Value error, ", "")
    return f"{where}: {message[0].lower()}{message[1:]}{got if path else ''}"


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
