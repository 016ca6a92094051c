"""Where the masked weights of a Hugging Face causal LM live, and which entries belong to what.

Only the weight matrices of the Transformer blocks are masked (as in the authors' code): the fused
query/key/value matrix, the attention output projection and the two MLP matrices of every layer.
Biases, embeddings, the unembedding, layer norms and GPT-2 position embeddings always stay in.

The two supported architectures store these matrices differently:

- GPT-NeoX uses `nn.Linear` (weight shape (out, in)). Its fused `query_key_value` rows are
  interleaved per head: head h owns rows [3·h·hs, 3·(h+1)·hs), in the order Q_h, K_h, V_h
  (`GPTNeoXAttention` views the output as (heads, 3·hs) and chunks the last axis in three). Reading
  the rows as contiguous thirds [Q | K | V] — as the authors' code does — mislabels them.
- GPT-2 uses `Conv1D` (weight shape (in, out), i.e. transposed). Its fused `c_attn` columns really
  are [Q | K | V], each d wide and split into heads of hs contiguous columns.

A `Block` names one group of entries (Q, K, V, O, MLP-in or MLP-out of one layer, or of one head or
some MLP units) as row and column indices into the stored weight, so callers never handle the
per-architecture index arithmetic themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bigram_subnetworks.errors import UserError

BLOCK_KINDS = ("Q", "K", "V", "O", "MLP-in", "MLP-out")
SUPPORTED = {"gpt_neox": "GPTNeoXForCausalLM", "gpt2": "GPT2LMHeadModel"}

# Per architecture: the masked parameter of each kind, relative to one Transformer layer.
_PARAMS = {
    "gpt_neox": {
        "QKV": "attention.query_key_value.weight",
        "O": "attention.dense.weight",
        "MLP-in": "mlp.dense_h_to_4h.weight",
        "MLP-out": "mlp.dense_4h_to_h.weight",
    },
    "gpt2": {
        "QKV": "attn.c_attn.weight",
        "O": "attn.c_proj.weight",
        "MLP-in": "mlp.c_fc.weight",
        "MLP-out": "mlp.c_proj.weight",
    },
}
_LAYER_PREFIX = {"gpt_neox": "gpt_neox.layers.{}.", "gpt2": "transformer.h.{}."}
# Kinds indexed by the matrix's output features (heads' Q/K/V, MLP units' pre-activations); the
# others (O, MLP-out) are indexed by its input features. nn.Linear keeps outputs on rows (axis 0),
# GPT-2's Conv1D on columns (axis 1).
_INDEXES_OUTPUTS = {"Q": True, "K": True, "V": True, "O": False, "MLP-in": True, "MLP-out": False}
_OUTPUT_AXIS = {"gpt_neox": 0, "gpt2": 1}


@dataclass(frozen=True, eq=False)
class Block:
    """Entries of one masked weight: the rows × cols sub-grid of `param` (None = all)."""

    layer: int
    kind: str
    param: str
    rows: torch.Tensor | None
    cols: torch.Tensor | None
    shape: tuple[int, int]  # the stored weight's shape

    def index(self) -> tuple[torch.Tensor | slice, ...]:
        """An index that reads or writes the block of a tensor shaped like the weight."""
        if self.rows is not None and self.cols is not None:
            return (self.rows[:, None], self.cols[None, :])
        return (
            slice(None) if self.rows is None else self.rows,
            slice(None) if self.cols is None else self.cols,
        )

    def select(self, tensor: torch.Tensor) -> torch.Tensor:
        """The block's entries of `tensor` (a copy when rows or cols are given)."""
        return tensor[self.index()]

    @property
    def size(self) -> int:
        n_rows = self.shape[0] if self.rows is None else len(self.rows)
        n_cols = self.shape[1] if self.cols is None else len(self.cols)
        return n_rows * n_cols


@dataclass(frozen=True)
class Layout:
    """Masked parameters of one model and the index arithmetic of its architecture."""

    arch: str
    n_layers: int
    n_heads: int
    d_model: int
    d_ff: int
    masked: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_masked(self) -> int:
        return sum(math.prod(self.shapes[name]) for name in self.masked)

    def param(self, layer: int, kind: str) -> str:
        """Name of the masked parameter that holds `kind` (Q, K and V share the fused matrix)."""
        self._check_layer(layer)
        key = "QKV" if kind in ("Q", "K", "V") else kind
        return _LAYER_PREFIX[self.arch].format(layer) + _PARAMS[self.arch][key]

    def layer_params(self, layer: int) -> list[str]:
        return [self.param(layer, kind) for kind in ("QKV", "O", "MLP-in", "MLP-out")]

    def blocks(self) -> list[Block]:
        """Every (layer, kind) block, layer by layer in BLOCK_KINDS order; they tile the masked
        parameters exactly."""
        heads = range(self.n_heads)
        out = []
        for layer in range(self.n_layers):
            out += [self._block(layer, kind, self._head_features(kind, heads)) for kind in "QKV"]
            out += [self._block(layer, kind, None) for kind in ("O", "MLP-in", "MLP-out")]
        return out

    def head_blocks(self, layer: int, head: int) -> list[Block]:
        """The Q, K, V and O entries of one attention head."""
        if not 0 <= head < self.n_heads:
            raise UserError(
                f"head {head}: out of range; this model has heads 0..{self.n_heads - 1}"
            )
        return [self._block(layer, kind, self._head_features(kind, [head])) for kind in "QKVO"]

    def mlp_unit_blocks(self, layer: int, units: Sequence[int]) -> list[Block]:
        """The MLP-in and MLP-out entries of the given MLP units (intermediate neurons)."""
        index = torch.as_tensor(list(units), dtype=torch.long)
        if index.numel() and not (index.min() >= 0 and index.max() < self.d_ff):
            raise UserError(
                f"MLP units {list(units)}: out of range; this model has units 0..{self.d_ff - 1}"
            )
        return [self._block(layer, kind, index) for kind in ("MLP-in", "MLP-out")]

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise UserError(
                f"layer {layer}: out of range; this model has layers 0..{self.n_layers - 1}"
            )

    def _head_features(self, kind: str, heads: Sequence[int]) -> torch.Tensor:
        """Indices of the heads' features along the axis that `kind` is split on."""
        hs = self.head_size
        if kind == "O":
            starts = [h * hs for h in heads]
        elif self.arch == "gpt_neox":  # rows interleaved per head: [Q_h, K_h, V_h] for each h
            starts = [3 * h * hs + "QKV".index(kind) * hs for h in heads]
        else:  # GPT-2 columns: [Q | K | V], each d_model wide
            starts = ["QKV".index(kind) * self.d_model + h * hs for h in heads]
        return torch.cat([torch.arange(s, s + hs) for s in starts])

    def _block(self, layer: int, kind: str, features: torch.Tensor | None) -> Block:
        name = self.param(layer, kind)
        shape = self.shapes[name]
        axis = _OUTPUT_AXIS[self.arch] if _INDEXES_OUTPUTS[kind] else 1 - _OUTPUT_AXIS[self.arch]
        rows, cols = (features, None) if axis == 0 else (None, features)
        return Block(layer, kind, name, rows, cols, (shape[0], shape[1]))


def arch_of(model: torch.nn.Module) -> str:
    """The model's architecture key ("gpt_neox" or "gpt2"); anything else is refused."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED:
        raise UserError(
            f"model type {model_type!r}: not supported; use a GPT-NeoX (Pythia) or GPT-2 causal LM"
        )
    return str(model_type)


def layout_of(model: torch.nn.Module) -> Layout:
    """The layout of a GPTNeoXForCausalLM or GPT2LMHeadModel, checked against its parameters."""
    arch = arch_of(model)
    config = model.config  # type: ignore[attr-defined]
    n_layers, n_heads, d_model = (
        int(config.num_hidden_layers),
        int(config.num_attention_heads),
        int(config.hidden_size),
    )
    if d_model % n_heads:
        raise UserError(f"hidden size {d_model}: not divisible by {n_heads} attention heads")
    params = dict(model.named_parameters())
    prefix = _LAYER_PREFIX[arch].format(0)
    if prefix + _PARAMS[arch]["MLP-in"] not in params:
        raise UserError(
            f"{type(model).__name__}: no parameter {prefix + _PARAMS[arch]['MLP-in']}; "
            f"load the model as {SUPPORTED[arch]}"
        )
    mlp_in = params[prefix + _PARAMS[arch]["MLP-in"]].shape
    d_ff = int(mlp_in[_OUTPUT_AXIS[arch]])
    expected = {"QKV": (3 * d_model, d_model), "O": (d_model, d_model)}
    expected |= {"MLP-in": (d_ff, d_model), "MLP-out": (d_model, d_ff)}
    if arch == "gpt2":  # Conv1D stores (in, out)
        expected = {kind: (shape[1], shape[0]) for kind, shape in expected.items()}
    masked, shapes = [], {}
    for layer in range(n_layers):
        for kind, rel in _PARAMS[arch].items():
            name = _LAYER_PREFIX[arch].format(layer) + rel
            if name not in params or tuple(params[name].shape) != expected[kind]:
                found = tuple(params[name].shape) if name in params else "missing"
                raise UserError(
                    f"{name}: expected shape {expected[kind]}, found {found}; "
                    f"the checkpoint does not match its {arch} config"
                )
            masked.append(name)
            shapes[name] = expected[kind]
    return Layout(arch, n_layers, n_heads, d_model, d_ff, tuple(masked), shapes)


def body(model: torch.nn.Module) -> torch.nn.Module:
    """The Transformer without the LM head (`model.gpt_neox` or `model.transformer`)."""
    return getattr(model, {"gpt_neox": "gpt_neox", "gpt2": "transformer"}[arch_of(model)])


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The layer norm applied after the last block (hook its input for pre-norm residuals)."""
    name = {"gpt_neox": "final_layer_norm", "gpt2": "ln_f"}[arch_of(model)]
    return getattr(body(model), name)


def unembedding(model: torch.nn.Module) -> torch.Tensor:
    """The LM head weight, shape (vocab rows, d_model)."""
    return model.get_output_embeddings().weight  # type: ignore[operator]


def input_embedding(model: torch.nn.Module) -> torch.Tensor:
    """The token embedding weight, shape (vocab rows, d_model)."""
    return model.get_input_embeddings().weight  # type: ignore[operator]


def block_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The Transformer layers, in order."""
    return list(getattr(body(model), {"gpt_neox": "layers", "gpt2": "h"}[arch_of(model)]))
