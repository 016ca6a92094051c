"""Where the masked weights of a Hugging Face causal LM live, and which entries belong to what.

Only the weight matrices of the Transformer blocks are masked (as in the authors' code): the
query/key/value projections, the attention output projection and the MLP matrices of every layer.
Biases, embeddings, the unembedding, norms (including the q_norm/k_norm of Qwen3, OLMo-2/3 and
Gemma-3) and GPT-2 position embeddings always stay in.

The supported families (`models.families`) store these matrices in three ways:

- GPT-NeoX uses `nn.Linear` (weight shape (out, in)). Its fused `query_key_value` rows are
  interleaved per head: head h owns rows [3·h·hs, 3·(h+1)·hs), in the order Q_h, K_h, V_h
  (`GPTNeoXAttention` views the output as (heads, 3·hs) and chunks the last axis in three). Reading
  the rows as contiguous thirds [Q | K | V] — as the authors' code does — mislabels them.
- GPT-2 uses `Conv1D` (weight shape (in, out), i.e. transposed). Its fused `c_attn` columns really
  are [Q | K | V], each d wide and split into heads of hs contiguous columns.
- The Llama-style families (Llama, Mistral, Qwen2, Qwen3, OLMo-2, OLMo-3, Gemma, Gemma-2, Gemma-3)
  use `nn.Linear` with separate `q_proj` (h·hd rows), `k_proj` and `v_proj` (kv·hd rows each) and
  `o_proj` (h·hd columns), where hd is the config's head_dim (not always d/h: Gemma, Qwen3) and
  kv ≤ h the number of key/value heads (grouped-query attention). Query head i reads key/value
  head i // (h / kv), as transformers' `repeat_kv` does. Their MLP is gated,
  down(act(gate(x)) · up(x)): MLP-in is held by two matrices, `gate_proj` and `up_proj` (MLP unit
  u is row u of both), MLP-out by `down_proj` (unit u is its column u).

A `Block` names one group of entries (Q, K, V, O, MLP-in or MLP-out of one layer, or of one head or
some MLP units) as row and column indices into one stored weight, so callers never handle the
per-architecture index arithmetic themselves. A kind held by several matrices (MLP-in of a gated
MLP) is one Block per matrix; sum them for the kind's totals.

Per-head blocks: `head_blocks(layer, i)` are the entries query head i reads — its own Q and O, and
the K and V of its key/value head, which (with grouped-query attention) the other query heads of
its group share; `kv_head_blocks(layer, g)` are the K and V of one key/value head. Q and O blocks
partition over query heads, K and V blocks over key/value heads. OLMo-2 and OLMo-3 normalise the
queries (and keys) over all heads at once (their q_norm acts on the whole q_proj output), so there
zeroing one head's Q or K entries also rescales the other heads' queries or keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from bigram_subnetworks.errors import UserError
from bigram_subnetworks.models.families import FAMILIES, check_supported

BLOCK_KINDS = ("Q", "K", "V", "O", "MLP-in", "MLP-out")


@dataclass(frozen=True)
class _Arch:
    """How one family names and stores its masked matrices."""

    prefix: str  # of layer i's parameters, with {} for i
    params: dict[str, str]  # slot -> name relative to the layer, in masked order
    slots: dict[str, tuple[str, ...]]  # kind -> the slots holding it
    output_axis: int  # 0 for nn.Linear (out, in), 1 for GPT-2's Conv1D (in, out)
    body: str
    layers: str
    final_norm: str
    fused_qkv: bool = False


_FUSED_SLOTS = {"Q": ("QKV",), "K": ("QKV",), "V": ("QKV",), "O": ("O",)}
_FUSED_SLOTS |= {"MLP-in": ("MLP-in",), "MLP-out": ("MLP-out",)}
_GATED = _Arch(
    prefix="model.layers.{}.",
    params={
        "Q": "self_attn.q_proj.weight",
        "K": "self_attn.k_proj.weight",
        "V": "self_attn.v_proj.weight",
        "O": "self_attn.o_proj.weight",
        "MLP-gate": "mlp.gate_proj.weight",
        "MLP-up": "mlp.up_proj.weight",
        "MLP-out": "mlp.down_proj.weight",
    },
    slots={
        "Q": ("Q",),
        "K": ("K",),
        "V": ("V",),
        "O": ("O",),
        "MLP-in": ("MLP-gate", "MLP-up"),
        "MLP-out": ("MLP-out",),
    },
    output_axis=0,
    body="model",
    layers="layers",
    final_norm="norm",
)
_ARCHS: dict[str, _Arch] = {
    "gpt_neox": _Arch(
        prefix="gpt_neox.layers.{}.",
        params={
            "QKV": "attention.query_key_value.weight",
            "O": "attention.dense.weight",
            "MLP-in": "mlp.dense_h_to_4h.weight",
            "MLP-out": "mlp.dense_4h_to_h.weight",
        },
        slots=_FUSED_SLOTS,
        output_axis=0,
        body="gpt_neox",
        layers="layers",
        final_norm="final_layer_norm",
        fused_qkv=True,
    ),
    "gpt2": _Arch(
        prefix="transformer.h.{}.",
        params={
            "QKV": "attn.c_attn.weight",
            "O": "attn.c_proj.weight",
            "MLP-in": "mlp.c_fc.weight",
            "MLP-out": "mlp.c_proj.weight",
        },
        slots=_FUSED_SLOTS,
        output_axis=1,
        body="transformer",
        layers="h",
        final_norm="ln_f",
        fused_qkv=True,
    ),
} | {model_type: _GATED for model_type in FAMILIES if model_type not in ("gpt_neox", "gpt2")}
assert _ARCHS.keys() == FAMILIES.keys(), "every supported family needs a layout"

# model_type -> the transformers class to load it as.
SUPPORTED = {model_type: family.causal_lm for model_type, family in FAMILIES.items()}
# Kinds indexed by the matrix's output features (heads' Q/K/V, MLP units' pre-activations); the
# others (O, MLP-out) are indexed by its input features. nn.Linear keeps outputs on rows (axis 0),
# GPT-2's Conv1D on columns (axis 1).
_INDEXES_OUTPUTS = {"Q": True, "K": True, "V": True, "O": False, "MLP-in": True, "MLP-out": False}


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
    """Masked parameters of one model and the index arithmetic of its architecture.

    `kv_heads` and `head_dim` are None where they follow from the rest (GPT-NeoX, GPT-2: as many
    key/value heads as heads, head size d_model / n_heads); see `n_kv_heads` and `head_size`."""

    arch: str
    n_layers: int
    n_heads: int
    d_model: int
    d_ff: int
    masked: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    kv_heads: int | None = field(default=None)
    head_dim: int | None = field(default=None)

    @property
    def family(self) -> str:
        return FAMILIES[self.arch].name

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads if self.kv_heads is None else self.kv_heads

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def kv_head_of(self, head: int) -> int:
        """The key/value head that query head `head` reads (transformers' `repeat_kv` order)."""
        self._check_head(head, self.n_heads, "heads")
        return head // self.group_size

    @property
    def n_masked(self) -> int:
        return sum(math.prod(self.shapes[name]) for name in self.masked)

    def params(self, layer: int, kind: str) -> list[str]:
        """Names of the masked parameters that hold `kind` (Q, K and V share GPT-NeoX's and
        GPT-2's fused matrix; MLP-in of a gated MLP is gate_proj and up_proj). Slot names
        ("QKV"; "MLP-gate", "MLP-up") are accepted too."""
        self._check_layer(layer)
        spec = _ARCHS[self.arch]
        if kind in spec.params:
            slots: tuple[str, ...] = (kind,)
        elif kind in spec.slots:
            slots = spec.slots[kind]
        else:
            known = ", ".join(dict.fromkeys([*spec.slots, *spec.params]))
            raise UserError(f"kind {kind!r}: unknown for a {self.family} model; use one of {known}")
        return [spec.prefix.format(layer) + spec.params[slot] for slot in slots]

    def param(self, layer: int, kind: str) -> str:
        """Name of the one masked parameter that holds `kind` (Q, K and V share the fused matrix
        of GPT-NeoX and GPT-2); for MLP-in of a gated MLP, which two matrices hold, use
        `params` (or the slot names "MLP-gate" and "MLP-up")."""
        names = self.params(layer, kind)
        if len(names) != 1:
            raise UserError(
                f"{kind} of a {self.family} model is held by {len(names)} matrices "
                f"({', '.join(names)}); use Layout.params"
            )
        return names[0]

    def layer_params(self, layer: int) -> list[str]:
        self._check_layer(layer)
        spec = _ARCHS[self.arch]
        return [spec.prefix.format(layer) + rel for rel in spec.params.values()]

    def blocks(self) -> list[Block]:
        """Every (layer, kind) block, layer by layer in BLOCK_KINDS order (a kind held by several
        matrices gives one block per matrix, in masked order); they tile the masked parameters
        exactly."""
        out = []
        for layer in range(self.n_layers):
            if _ARCHS[self.arch].fused_qkv:
                heads = range(self.n_heads)
                out += [self._block(layer, k, self._head_features(k, heads)) for k in "QKV"]
                out += [self._block(layer, kind, None) for kind in ("O", "MLP-in", "MLP-out")]
            else:
                for kind in BLOCK_KINDS:
                    out += self._blocks(layer, kind, None)
        return out

    def head_blocks(self, layer: int, head: int, kinds: str = "QKVO") -> list[Block]:
        """The Q, K, V and O entries that query head `head` reads (or just `kinds` of them, e.g.
        "QO" for the entries it owns alone). With grouped-query attention its K and V are those
        of key/value head `kv_head_of(head)`, shared with the rest of its group."""
        self._check_head(head, self.n_heads, "heads")
        out = []
        for kind in kinds:
            if kind not in "QKVO":
                raise UserError(f"kind {kind!r}: not a head kind; use Q, K, V or O")
            owner = self.kv_head_of(head) if kind in "KV" else head
            out += self._blocks(layer, kind, self._head_features(kind, [owner]))
        return out

    def kv_head_blocks(self, layer: int, kv_head: int) -> list[Block]:
        """The K and V entries of one key/value head (the same as head_blocks' K and V of each
        of its query heads; without grouped-query attention, key/value head i is head i)."""
        self._check_head(kv_head, self.n_kv_heads, "key/value heads")
        return [
            block
            for kind in "KV"
            for block in self._blocks(layer, kind, self._head_features(kind, [kv_head]))
        ]

    def mlp_unit_blocks(self, layer: int, units: Sequence[int]) -> list[Block]:
        """The MLP-in and MLP-out entries of the given MLP units (intermediate neurons): MLP-in
        first (gate_proj then up_proj for a gated MLP), MLP-out last."""
        index = torch.as_tensor(list(units), dtype=torch.long)
        if index.numel() and not (index.min() >= 0 and index.max() < self.d_ff):
            raise UserError(
                f"MLP units {list(units)}: out of range; this model has units 0..{self.d_ff - 1}"
            )
        return [b for kind in ("MLP-in", "MLP-out") for b in self._blocks(layer, kind, index)]

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise UserError(
                f"layer {layer}: out of range; this model has layers 0..{self.n_layers - 1}"
            )

    @staticmethod
    def _check_head(head: int, count: int, what: str) -> None:
        if not 0 <= head < count:
            raise UserError(f"head {head}: out of range; this model has {what} 0..{count - 1}")

    def _head_features(self, kind: str, heads: Sequence[int]) -> torch.Tensor:
        """Indices of the heads' features along the axis that `kind` is split on (query heads
        for Q and O, key/value heads for K and V)."""
        hs = self.head_size
        if kind == "O" or not _ARCHS[self.arch].fused_qkv:  # separate q/k/v/o: h·hs ... (h+1)·hs
            starts = [h * hs for h in heads]
        elif self.arch == "gpt_neox":  # rows interleaved per head: [Q_h, K_h, V_h] for each h
            starts = [3 * h * hs + "QKV".index(kind) * hs for h in heads]
        else:  # GPT-2 columns: [Q | K | V], each d_model wide
            starts = ["QKV".index(kind) * self.d_model + h * hs for h in heads]
        return torch.cat([torch.arange(s, s + hs) for s in starts])

    def _blocks(self, layer: int, kind: str, features: torch.Tensor | None) -> list[Block]:
        """One block per matrix that holds `kind`, restricted to `features` (None = all)."""
        return [self._block(layer, kind, features, name) for name in self.params(layer, kind)]

    def _block(
        self, layer: int, kind: str, features: torch.Tensor | None, name: str | None = None
    ) -> Block:
        name = self.param(layer, kind) if name is None else name
        shape = self.shapes[name]
        output_axis = _ARCHS[self.arch].output_axis
        axis = output_axis if _INDEXES_OUTPUTS[kind] else 1 - output_axis
        rows, cols = (features, None) if axis == 0 else (None, features)
        return Block(layer, kind, name, rows, cols, (shape[0], shape[1]))


def arch_of(model: torch.nn.Module) -> str:
    """The model's architecture key (its config's model_type); unsupported families are refused
    with a one-line message naming the supported ones."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    check_supported(model_type)
    return str(model_type)


def _config_int(config: object, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None


def layout_of(model: torch.nn.Module) -> Layout:
    """The layout of a supported causal LM (see `models.families`), checked against its
    parameters."""
    arch = arch_of(model)
    spec = _ARCHS[arch]
    config = model.config  # type: ignore[attr-defined]
    n_layers, n_heads, d_model = (
        int(config.num_hidden_layers),
        int(config.num_attention_heads),
        int(config.hidden_size),
    )
    params = dict(model.named_parameters())
    first_mlp = spec.prefix.format(0) + spec.params[spec.slots["MLP-in"][0]]
    if first_mlp not in params:
        raise UserError(
            f"{type(model).__name__}: no parameter {first_mlp}; load the model as {SUPPORTED[arch]}"
        )
    d_ff = int(params[first_mlp].shape[spec.output_axis])
    if spec.fused_qkv:
        if d_model % n_heads:
            raise UserError(f"hidden size {d_model}: not divisible by {n_heads} attention heads")
        kv_heads, head_dim = None, None
        expected = {"QKV": (3 * d_model, d_model), "O": (d_model, d_model)}
        expected |= {"MLP-in": (d_ff, d_model), "MLP-out": (d_model, d_ff)}
        if spec.output_axis == 1:  # Conv1D stores (in, out)
            expected = {slot: (shape[1], shape[0]) for slot, shape in expected.items()}
    else:
        kv_heads = _config_int(config, "num_key_value_heads") or n_heads
        head_dim = _config_int(config, "head_dim") or d_model // n_heads
        if n_heads % kv_heads:
            raise UserError(
                f"{n_heads} attention heads: not a multiple of {kv_heads} key/value heads; "
                "the config is not a grouped-query attention model bsn understands"
            )
        q_width, kv_width = n_heads * head_dim, kv_heads * head_dim
        expected = {
            "Q": (q_width, d_model),
            "K": (kv_width, d_model),
            "V": (kv_width, d_model),
            "O": (d_model, q_width),
            "MLP-gate": (d_ff, d_model),
            "MLP-up": (d_ff, d_model),
            "MLP-out": (d_model, d_ff),
        }
    masked, shapes = [], {}
    for layer in range(n_layers):
        for slot, rel in spec.params.items():
            name = spec.prefix.format(layer) + rel
            if name not in params or tuple(params[name].shape) != expected[slot]:
                found = tuple(params[name].shape) if name in params else "missing"
                raise UserError(
                    f"{name}: expected shape {expected[slot]}, found {found}; "
                    f"the checkpoint does not match its {arch} config"
                )
            masked.append(name)
            shapes[name] = expected[slot]
    return Layout(arch, n_layers, n_heads, d_model, d_ff, tuple(masked), shapes, kv_heads, head_dim)


def body(model: torch.nn.Module) -> torch.nn.Module:
    """The Transformer without the LM head (`model.gpt_neox`, `model.transformer` or
    `model.model`)."""
    return getattr(model, _ARCHS[arch_of(model)].body)


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The norm applied after the last block (hook its input for pre-norm residuals)."""
    return getattr(body(model), _ARCHS[arch_of(model)].final_norm)


def unembedding(model: torch.nn.Module) -> torch.Tensor:
    """The LM head weight, shape (vocab rows, d_model); the token embedding itself when the
    model ties them (GPT-2, Gemma, some Llama and Qwen configs)."""
    return model.get_output_embeddings().weight  # type: ignore[operator]


def input_embedding(model: torch.nn.Module) -> torch.Tensor:
    """The token embedding weight, shape (vocab rows, d_model). Gemma multiplies the looked-up
    rows by sqrt(d_model) inside the embedding module: the weight is the unscaled table."""
    return model.get_input_embeddings().weight  # type: ignore[operator]


def ties_embeddings(model: torch.nn.Module) -> bool:
    """Whether the LM head weight is the token embedding's (one tensor)."""
    return unembedding(model) is input_embedding(model)


def embedding_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Every distinct embedding parameter, once, by its name in `model.named_parameters()`:
    the token embedding, then the LM head's weight and bias unless tied to it (a tied weight
    appears once, under the name named_parameters reports), then GPT-2's position embedding.

    Copying each of these from one model into another of the same family copies all of its
    embeddings exactly once; different keys mean the two models differ in what they tie."""
    arch = arch_of(model)
    modules = [model.get_input_embeddings(), model.get_output_embeddings()]  # type: ignore[operator]
    if arch == "gpt2":
        modules.append(body(model).wpe)
    names = {id(param): name for name, param in model.named_parameters()}
    out: dict[str, torch.nn.Parameter] = {}
    for module in modules:
        for param in module.parameters():
            name = names[id(param)]
            out.setdefault(name, param)
    return out


def logit_softcap(model: torch.nn.Module) -> float | None:
    """The final-logit soft-cap c of the model (Gemma-2 and, where configured, Gemma-3: logits
    are c·tanh(z / c) with z = W_U h), or None when its logits are linear in the hidden state."""
    arch_of(model)
    value = getattr(model.config, "final_logit_softcapping", None)  # type: ignore[union-attr]
    return None if value is None else float(value)


def output_logits(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The model's logits from final hidden states (after the final norm), as its own forward
    computes them: the LM head (weight and any bias), then the family's soft-cap if it has one.
    Use it instead of `hidden @ unembedding(model).T`, which is wrong for Gemma-2."""
    logits = model.get_output_embeddings()(hidden)  # type: ignore[operator]
    cap = logit_softcap(model)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def block_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The Transformer layers, in order."""
    return list(getattr(body(model), _ARCHS[arch_of(model)].layers))
