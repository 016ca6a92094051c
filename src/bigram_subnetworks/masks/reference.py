"""The authors' released masks (Chang & Bergen 2025), read safely and imported as bsn masks.

What a released file holds (from the authors' own loading and training code, GitHub
tylerachang/bigram-subnetworks; the Hub has one repository per model,
`tylerachang/bigram-subnetworks-<model>` with GPT-2 small as `gpt2-small`, and one file per λ,
`subnetwork_dict_lambda<λ>.pickle`, λ 1, 1e1 and for the largest models 1e2):

- a pickle (protocol 5) of one dict; `orig_model_name` maps to the model's Hub id (a str,
  e.g. `EleutherAI/pythia-160m`); every other key is one of the model's own parameter names
  (`gpt_neox.layers.N.attention.query_key_value.weight`, `transformer.h.N.attn.c_attn.weight`)
  and maps to a numpy bool array of that parameter's stored shape, True keeping the entry;
- the masked parameters are the weight matrices of the Transformer blocks, the same ones bsn
  masks (`models.layout`): GPT-NeoX's fused query_key_value (rows interleaved per head, as
  stored), attention.dense and the two MLP matrices; GPT-2's Conv1D c_attn, c_proj, c_fc and
  mlp.c_proj in their stored (in, out) layout, so no axis is swapped on import;
- embeddings, the unembedding, norms and biases are kept (the authors' loader multiplies only
  the parameters a file names). A file that names one of them must keep every entry of it.

The pickle is read by `MaskUnpickler`, which hands out numpy's array and dtype constructors (with
their arguments checked) and builtin containers only: any other global is refused in one line
before anything in the file runs. Files larger than a one-byte-per-entry mask of the whole
model could be, non-binary arrays and arrays of other shapes are refused too.
"""

from __future__ import annotations

import io
import math
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import sha256_file

if TYPE_CHECKING:
    import torch

    from bigram_subnetworks.config import Config
    from bigram_subnetworks.models.layout import Layout

ORIG_MODEL_KEY = "orig_model_name"
HUB_PREFIX = "hf://"
AUTHORS_REPO = "tylerachang/bigram-subnetworks-{}"
FILE_PATTERN = re.compile(r"subnetwork_dict_lambda([0-9a-z.]+)\.pickle$")
SLACK_BYTES = 1 << 20  # pickle framing and names on top of one byte per entry
IMPORT_OPERATION = "import of the authors' released mask"


def authors_filename(label: str) -> str:
    """The file name of the authors' mask at λ `label` (`subnetwork_dict_lambda1e1.pickle`)."""
    return f"subnetwork_dict_lambda{label}.pickle"


def lambda_of_filename(path: str) -> str | None:
    """The λ label in an authors' file name, or None when the name is not theirs."""
    found = FILE_PATTERN.search(path)
    return found.group(1) if found else None


# ----------------------------------------------------------------------- reading the pickle


class _Refused(ValueError):
    """An allowed constructor called with arguments no mask file needs."""


def _numpy_internals() -> tuple[Callable[..., Any], Callable[..., Any]]:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
        from numpy.core.numeric import _frombuffer
    return _reconstruct, _frombuffer


def _plain_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise _Refused(f"array shape {shape!r}")
    return shape


class _ArrayType:
    """What a pickle gets for numpy.ndarray: a name to hand to _reconstruct, never a
    constructor (ndarray((10**12,), bool) would allocate an uninitialised array)."""

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise _Refused("a direct numpy.ndarray(...) call")


_NDARRAY = _ArrayType()


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's pickles (protocols 0-4) start an array empty, then fill it with __setstate__
    (which checks the data against the shape); an array made big here would be uninitialised
    memory, so only empty plain ndarrays are made."""
    if subtype is not _NDARRAY or math.prod(_plain_shape(shape)) > 1:
        raise _Refused(f"array start {type(subtype).__name__} {shape!r}")
    if not isinstance(dtype, (bytes, str)):
        raise _Refused(f"array start dtype {dtype!r}")
    return _numpy_internals()[0](np.ndarray, shape, dtype)


def _safe_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's protocol-5 pickles: an array over the pickled bytes (as large as they are)."""
    if not isinstance(buffer, (bytes, bytearray, memoryview, pickle.PickleBuffer)):
        raise _Refused(f"array buffer of type {type(buffer).__name__}")
    if not isinstance(dtype, np.dtype) or dtype.hasobject or order not in ("C", "F", "A"):
        raise _Refused(f"array of dtype {dtype!r}, order {order!r}")
    return _numpy_internals()[1](buffer, dtype, _plain_shape(shape), order)


def _safe_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not isinstance(spec, str):
        raise _Refused(f"dtype spec {spec!r}")
    dtype = np.dtype(spec, align=bool(align), copy=bool(copy))
    if dtype.hasobject:
        raise _Refused(f"dtype {dtype}")
    return dtype


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """Protocols 0-2 spell bytes as _codecs.encode(str, 'latin1')."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode of {type(text).__name__} as {encoding!r}")
    return text.encode("latin1")


def _bytearray(data: Any = b"", encoding: Any = None) -> bytearray:
    """Protocols 0-4 spell a bytearray as bytearray(bytes) (or (str, 'latin-1')); a size
    argument (bytearray(10**12)) would allocate, so only data is accepted."""
    if isinstance(data, bytes) and encoding is None:
        return bytearray(data)
    if isinstance(data, str) and encoding in ("latin1", "latin-1"):
        return bytearray(data.encode("latin1"))
    raise _Refused(f"bytearray of {type(data).__name__}")


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _latin1,
    ("builtins", "bytearray"): _bytearray,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
}


class MaskUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, dtypes and builtin containers and nothing else:
    any other global (os.system, builtins.eval, a class of any module) is refused before it is
    looked up, so nothing a file names ever runs."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise UserError(
                f"{self.source}: refused: the pickle asks for {module}.{name}, which no mask file "
                "needs (only numpy arrays, dtypes and builtin containers are read); nothing in "
                "it was run"
            )
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise UserError(f"{self.source}: refused: the pickle asks for a persistent object")


# What a damaged or hostile pickle raises while it is read (after find_class let it through).
_UNREADABLE = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError)
_UNREADABLE += (IndexError, KeyError, OverflowError, MemoryError, RecursionError)


def read_pickle(path: Path, max_bytes: int) -> Any:
    """The object in a mask pickle, read with `MaskUnpickler`; one-line UserErrors for a missing,
    oversized, refused or unreadable file."""
    if not path.is_file():
        raise UserError(f"{path}: reference mask file not found; check the path")
    size = path.stat().st_size
    if size > max_bytes:
        raise UserError(
            f"{path}: {size:,} bytes, more than a one-byte-per-entry mask of this model could be "
            f"({max_bytes:,}); not a mask of this model"
        )
    with path.open("rb") as handle:
        try:
            return MaskUnpickler(handle, str(path)).load()
        except UserError:
            raise
        except _Refused as error:
            raise UserError(f"{path}: refused: {error} is not part of a mask file") from None
        except _UNREADABLE as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UserError(
                f"{path}: not a readable mask pickle ({type(error).__name__}: {reason})"
            ) from None


def read_reference(path: Path, max_bytes: int) -> tuple[dict[str, np.ndarray], str | None]:
    """The bool arrays (by parameter name) and `orig_model_name` of an authors' mask file."""
    content = read_pickle(path, max_bytes)
    if not isinstance(content, dict):
        raise UserError(
            f"{path}: holds a {type(content).__name__}, not the dict of parameter name -> "
            "bool array the authors' mask files hold"
        )
    orig = content.get(ORIG_MODEL_KEY)
    if orig is not None and not isinstance(orig, str):
        raise UserError(f"{path}: {ORIG_MODEL_KEY} is a {type(orig).__name__}, not a model id")
    arrays: dict[str, np.ndarray] = {}
    for key, value in content.items():
        if key == ORIG_MODEL_KEY:
            continue
        if not isinstance(key, str):
            raise UserError(f"{path}: key {key!r} is not a parameter name")
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biu":
            what = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise UserError(f"{path}: {key} holds {what}, not a binary numpy array")
        if value.dtype.kind != "b" and value.size and not np.isin(value, (0, 1)).all():
            raise UserError(f"{path}: {key} holds values other than 0 and 1; not a binary mask")
        arrays[key] = value.astype(bool, copy=False)
    if not arrays:
        raise UserError(f"{path}: holds no masks (only {sorted(map(str, content))})")
    return arrays, orig


# ---------------------------------------------------------------------- onto the model


def _transposed_hint(shape: tuple[int, ...], expected: tuple[int, ...]) -> str:
    if len(shape) == 2 and shape[::-1] == expected and shape != expected:
        return (
            " (its transpose: the authors' files keep each weight's stored layout, GPT-2's "
            "Conv1D as (in, out); this file was transposed)"
        )
    return ""


def to_mask(
    arrays: Mapping[str, np.ndarray],
    source: str,
    layout: Layout,
    shapes: Mapping[str, tuple[int, ...]],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """This project's mask (exactly `layout.masked`) from an authors' file's arrays, and the
    names of the other arrays the file lists (each checked to keep every entry; one under a
    name the model does not have, such as older transformers' GPT-NeoX `embed_out.weight`, is
    accepted only so). `shapes` are every parameter of the model (tied ones under each name).
    One-line UserErrors for an array that is not a parameter (and drops entries), has another
    shape, or drops entries bsn never masks."""
    import torch

    masked = set(layout.masked)
    for name, array in arrays.items():
        expected = layout.shapes.get(name) or shapes.get(name)
        if expected is None and array.all():
            continue  # kept whole under a name this transformers spells otherwise (embed_out)
        if expected is None:
            raise UserError(
                f"{source}: {name} is not a parameter of this {layout.family} model; a mask of "
                "another model or family"
            )
        if tuple(array.shape) != tuple(expected):
            raise UserError(
                f"{source}: {name} has shape {tuple(array.shape)}, the model {tuple(expected)}"
                f"{_transposed_hint(tuple(array.shape), tuple(expected))}; a mask of another "
                "model"
            )
        if name not in masked and not array.all():
            dropped = int(array.size - np.count_nonzero(array))
            raise UserError(
                f"{source}: {name} is not a masked weight (bsn keeps embeddings, norms and "
                f"biases whole) but the file drops {dropped:,} of its {array.size:,} entries; "
                "bsn cannot compare such a mask"
            )
    missing = [name for name in layout.masked if name not in arrays]
    if missing:
        raise UserError(
            f"{source}: no mask for {missing[0]} ({len(missing)} of the model's "
            f"{len(layout.masked)} masked weights missing); a mask of another model or family"
        )
    mask = {name: torch.from_numpy(np.ascontiguousarray(arrays[name])) for name in layout.masked}
    return mask, sorted(set(arrays) - masked)


def max_file_bytes(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """The largest a mask pickle of a model with these parameters can be: one byte per entry of
    every parameter, plus framing."""
    return sum(math.prod(shape) for shape in shapes.values()) + SLACK_BYTES


def parameter_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape by name, tied parameters under each of their names."""
    return {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False)}


# ------------------------------------------------------------------------ where it comes from


@dataclass(frozen=True)
class HubSource:
    """`hf://<owner>/<repo>[@<revision>][/<file>]`: a file of a Hub model repo."""

    repo_id: str
    revision: str | None
    filename: str

    def __str__(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"{HUB_PREFIX}{self.repo_id}{at}/{self.filename}"


def parse_source(text: str, label: str | None) -> HubSource | Path:
    """A reference source: an `hf://` Hub path (its file defaults to the authors' name for λ
    `label`) or a local file."""
    if not text.startswith(HUB_PREFIX):
        return Path(text)
    parts = text[len(HUB_PREFIX) :].split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise UserError(
            f"{text}: a Hub reference is hf://<owner>/<repo>[@<revision>][/<file>], e.g. "
            f"hf://{AUTHORS_REPO.format('pythia-160m')}"
        )
    name, _, revision = parts[1].partition("@")
    filename = "/".join(parts[2:])
    if not filename:
        if label is None:
            raise UserError(f"{text}: name the file (or give --lambda for the authors' name)")
        filename = authors_filename(label)
    return HubSource(f"{parts[0]}/{name}", revision or None, filename)


def check_source_text(text: str) -> str:
    """Config validation of one reference source (no file access)."""
    if not text.strip():
        raise ValueError("a reference mask source must not be empty")
    if text.startswith(HUB_PREFIX):
        try:
            parse_source(text, "1")
        except UserError as error:
            raise ValueError(str(error)) from None
    return text


def locate(source: HubSource | Path) -> tuple[Path, dict[str, Any]]:
    """The local file of a source (a Hub file through the Hugging Face cache: downloaded where
    the network is allowed, found in the cache offline) and what the card records of it."""
    if isinstance(source, Path):
        if not source.is_file():
            raise UserError(f"{source}: reference mask file not found; check the path")
        return source, {"file": str(source)}
    from bigram_subnetworks.masks.sharing import hub_file

    path, commit = hub_file(source.repo_id, source.filename, source.revision)
    record = {"repo": source.repo_id, "revision": source.revision or "main", "commit": commit}
    return path, record | {"file": source.filename}


def _same_model(orig: str, model_id: str) -> bool:
    """Hub ids naming one model (`gpt2` is `openai-community/gpt2`)."""
    return orig.rstrip("/").split("/")[-1].lower() == model_id.rstrip("/").split("/")[-1].lower()


def import_reference(
    source_text: str,
    label: str | None,
    model: torch.nn.Module,
    identity: dict[str, Any],
    output: Path,
) -> dict[str, Any]:
    """Convert an authors' mask file (local or `hf://`) of `model` into a bsn mask file at
    `output`, whose card names its source; the metadata written."""
    from bigram_subnetworks.masks.toolkit import kept, save_mask, total
    from bigram_subnetworks.models.layout import layout_of

    source = parse_source(source_text, label)
    path, record = locate(source)
    label = label or lambda_of_filename(str(path.name))
    if label is None:
        raise UserError(f"{source}: no λ in its name (subnetwork_dict_lambda<λ>.pickle); give one")
    layout, shapes = layout_of(model), parameter_shapes(model)
    arrays, orig = read_reference(path, max_file_bytes(shapes))
    where = str(source)
    model_id = identity.get("id")
    if orig and model_id and not _same_model(orig, str(model_id)):
        raise UserError(
            f"{where}: a mask of {orig}, but the model is {model_id}; import it for {orig}"
        )
    mask, others = to_mask(arrays, where, layout, shapes)
    record |= {"sha256": sha256_file(path), ORIG_MODEL_KEY: orig, "kept_whole": others}
    metadata = {
        **identity,
        "target": "bigram",
        "lambda": label,
        "operation": IMPORT_OPERATION,
        "sources": [where],
        "reference": record,
    }
    save_mask(output, mask, metadata)
    return metadata | {"kept": kept(mask), "total": total(mask)}


def run_stage(cfg: Config, *, model: str, lam: str, model_dir: Path, mask: Path) -> None:
    """The reference_mask stage: one configured reference mask of one model, imported (from a
    local file, or from the Hub into the run's Hugging Face cache) as a bsn mask file."""
    import logging

    from bigram_subnetworks.models.loading import load_model, model_identity

    network, info = load_model(model_dir)
    metadata = import_reference(
        cfg.reference_masks[model][lam], lam, network, model_identity(model_dir, info), mask
    )
    logging.getLogger(__name__).info(
        "%s λ %s: imported %s, kept %d of %d masked entries",
        model,
        lam,
        metadata["sources"][0],
        metadata["kept"],
        metadata["total"],
    )
