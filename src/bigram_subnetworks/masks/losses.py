"""Mask-training losses: the exact n-gram cross-entropy without a dense target, and distillation.

For a position with context c (its last n − 1 tokens: the current token for the paper's bigram
target) and final hidden state h (after the final norm), the logits are z = W_U h (+ b), cut to
the tokenizer's vocabulary. The soft-target cross-entropy against the n-gram row P(· | c) is

    CE(P(·|c), softmax(z)) = logsumexp(z) − Σ_j P(j|c) z_j.

For orders 1 and 2 the sum is h · M[c] + (P b)[c] with M = P W_U, computed once because W_U is
frozen (one row for the unigram, V for the bigram). Beyond order 2 a dense M would have a row per
context seen, so P is kept as CSR rows over the contexts instead, and the sum gathers the logits of
this batch at each position's support (one gather and one segment sum per batch); soft-capped
logits z = c·tanh((W_U h + b) / c) take that gather at every order, since they are not linear in h.
A context never seen backs off to the longest suffix context that was (for the bigram: the
unigram). No (batch, seq, vocab) target is ever built.

Every loss here runs in float32 (or wider) with autocast switched off, also inside a bf16 autocast
region: bf16 logits are rounded by up to 2^-9 of their size, an error that logsumexp(z) picks up
but h · M[c] does not, so the two terms would no longer cancel. Under autocast the hidden states
(and, for distillation, the teacher's) may still come from a bf16 body; only the head is exact.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from bigram_subnetworks.artifacts import NGRAM_ORDERS
from bigram_subnetworks.data.bigrams import BigramCounts
from bigram_subnetworks.data.ngrams import (
    NgramCounts,
    NgramIndex,
    check_chain,
    context_rows,
    from_bigram_counts,
    unigram_counts,
)


def _token_rows(table: NgramCounts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (crow over contexts 0..V-1, col, P) of an order-2 table; the start row is left out."""
    vocab = table.vocab_size
    prev = np.repeat(table.context[:, 0].astype(np.int64), np.diff(table.crow))
    real = prev < vocab
    values = (
        table.count[real].astype(np.float64) / np.repeat(table.row_total, np.diff(table.crow))[real]
    )
    crow = np.zeros(vocab + 1, dtype=np.int64)
    np.cumsum(np.bincount(prev[real], minlength=vocab), out=crow[1:])
    return crow, table.next[real].astype(np.int64), values


def _sparse_csr(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    # The indices are sorted and in range by construction, so the (costly) invariant check is
    # off explicitly; torch warns about beta CSR support once per process otherwise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def bigram_matrix(counts: BigramCounts) -> torch.Tensor:
    """P(next | current) as a sparse CSR (V × V) matrix of the contexts seen in training.

    Rows of contexts never seen are empty here; `NgramTarget` backs them off to the unigram.
    """
    vocab = counts.vocab_size
    rows = map(torch.from_numpy, _token_rows(from_bigram_counts(counts)))
    return _sparse_csr(*rows, size=(vocab, vocab))


def _unigram_probabilities(table: NgramCounts) -> torch.Tensor:
    """The order-1 distribution, dense (V,) float64; uniform when there are no tokens at all."""
    vocab = table.vocab_size
    dense = torch.zeros(vocab, dtype=torch.float64)
    dense[torch.from_numpy(table.next.astype(np.int64))] = torch.from_numpy(
        table.count.astype(np.float64)
    )
    if dense.sum() == 0:
        return torch.full((vocab,), 1.0 / vocab, dtype=torch.float64)
    return dense / dense.sum()


def unigram_distribution(counts: BigramCounts) -> torch.Tensor:
    """Token frequencies; uniform when there are no tokens at all (the last back-off)."""
    return _unigram_probabilities(unigram_counts(counts))


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types, else the dtype itself (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def full_precision(device: torch.device) -> AbstractContextManager[object]:
    """Autocast off on `device` (a no-op where autocast does not exist), for the loss head."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


def dense_bigram_matrix(counts: BigramCounts) -> torch.Tensor:
    """The full (V × V) bigram distribution with unigram back-off: the slow reference."""
    sparse = bigram_matrix(counts)
    dense = sparse.to_dense()
    dense[torch.diff(sparse.crow_indices()) == 0] = unigram_distribution(counts)
    return dense


def dense_ngram_targets(tables: list[NgramCounts], input_ids: torch.Tensor) -> torch.Tensor:
    """The reference: P(· | longest seen suffix context) of every position, dense (..., V)
    float64, each position's row written out from the tables."""
    check_chain(tables)
    vocab = tables[0].vocab_size
    ids = input_ids.cpu()
    target = _unigram_probabilities(tables[0]).expand(ids.numel(), vocab).clone()
    for table in tables[1:]:
        found = context_rows(table, ids).reshape(-1).numpy()
        positions = np.flatnonzero(found >= 0)
        rows = found[positions]
        sizes = np.diff(table.crow)[rows]
        entry = np.repeat(table.crow[rows] - np.cumsum(sizes) + sizes, sizes)
        entry += np.arange(entry.size)
        at = torch.from_numpy(np.repeat(positions, sizes))
        probability = (
            table.count[entry].astype(np.float64) / table.row_total[np.repeat(rows, sizes)]
        )
        target[torch.from_numpy(positions)] = 0.0
        target[at, torch.from_numpy(table.next[entry].astype(np.int64))] = torch.from_numpy(
            probability
        )
    return target.reshape(*ids.shape, vocab)


def softcap_logits(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """c·tanh(z / c), computed as transformers' Gemma2ForCausalLM does."""
    return torch.tanh(logits / cap) * cap


# The attribute by which an unembedding tensor (MaskedLM.unembed) carries its model's final-logit
# soft-cap to `NgramTarget.build` when the caller passes none.
SOFTCAP_ATTRIBUTE = "logit_softcap"


@dataclass
class SparseRows:
    """Rows of P as CSR over contexts (of one or several orders, stacked): Σ_v P[row, v] z_v by
    gathering the logits at each row's support."""

    crow: torch.Tensor  # (rows + 1,) int64: row r of P is entries crow[r] .. crow[r + 1]
    col: torch.Tensor  # (nnz,) int64
    value: torch.Tensor  # (nnz,) P entries, float32 (float64 for a float64 unembedding)

    def support(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For every entry of the positions' rows (flattened; none where row < 0): its position
        and its index into `col`/`value`; and each position's number of entries."""
        flat = rows.reshape(-1)
        safe = flat.clamp(min=0)
        start = self.crow[safe]
        count = torch.where(flat >= 0, self.crow[safe + 1] - start, 0)
        total = int(count.sum())
        positions = torch.arange(flat.numel(), device=flat.device)
        row = torch.repeat_interleave(positions, count, output_size=total)
        offset = torch.arange(total, device=flat.device) - (torch.cumsum(count, 0) - count)[row]
        return row, start[row] + offset, count

    def expected_from_logits(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Σ_v P[row, v] · logits_v for every position (shape of `rows`; 0 where row < 0)."""
        z = logits.reshape(-1, logits.shape[-1])
        row, entry, _ = self.support(rows)
        contribution = self.value[entry] * z[row, self.col[entry]].to(self.value.dtype)
        expected = torch.zeros(rows.numel(), dtype=self.value.dtype, device=z.device)
        return expected.index_add(0, row, contribution).reshape(rows.shape)

    def batch_matrix(
        self, rows: torch.Tensor, unembed: torch.Tensor, bias: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Σ_v P[row, v] · W_U[v] (shape of `rows` + (d,)) and Σ_v P[row, v] · b_v for every
        position: the rows of M = P W_U this batch needs, as one sparse (positions × V) product
        with the frozen unembedding (so the gradient to the hidden states is the bigram path's:
        no (positions, V) scatter)."""
        _, entry, count = self.support(rows)
        crow = torch.cat([count.new_zeros(1), torch.cumsum(count, 0)])
        p = _sparse_csr(crow, self.col[entry], self.value[entry], (rows.numel(), unembed.shape[0]))
        m = p @ unembed.detach().to(self.value.dtype)
        bias_term = None
        if bias is not None:
            bias_term = (p @ bias.detach().to(self.value.dtype)[:, None]).reshape(rows.shape)
        return m.reshape(*rows.shape, -1), bias_term

    def to(self, device: torch.device) -> SparseRows:
        return SparseRows(self.crow.to(device), self.col.to(device), self.value.to(device))


@dataclass
class ContextLookup:
    """Each position's row in the stacked `SparseRows`: its longest context seen (−1: none)."""

    indexes: tuple[NgramIndex, ...]  # highest order first
    offsets: tuple[int, ...]  # each order's first row in the stack

    def rows(self, input_ids: torch.Tensor) -> torch.Tensor:
        found = torch.full(input_ids.shape, -1, dtype=torch.int64, device=input_ids.device)
        for index, offset in zip(self.indexes, self.offsets, strict=True):
            rows = index.rows(input_ids)
            found = torch.where((found < 0) & (rows >= 0), rows + offset, found)
        return found

    def to(self, device: torch.device) -> ContextLookup:
        return ContextLookup(tuple(i.to(device) for i in self.indexes), self.offsets)


def _stacked_rows(
    tables: list[NgramCounts], unigram: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> tuple[SparseRows, ContextLookup]:
    """The CSR rows of `tables` (highest order first; order 1 is the one unigram row)."""
    crows, cols, values, indexes, offsets = [np.zeros(1, dtype=np.int64)], [], [], [], []
    n_rows, n_entries = 0, 0
    for table in reversed(tables):
        if table.order == 1:
            col = torch.nonzero(unigram).squeeze(1).numpy()
            value = unigram[col].numpy()
            crow = np.array([0, col.size], dtype=np.int64)
        else:
            col = table.next.astype(np.int64)
            value = table.count.astype(np.float64) / np.repeat(table.row_total, np.diff(table.crow))
            crow = table.crow
        indexes.append(NgramIndex.of(table).to(device))
        offsets.append(n_rows)
        crows.append(crow[1:] + n_entries)
        cols.append(col)
        values.append(value)
        n_rows += crow.size - 1
        n_entries += col.size
    sparse = SparseRows(
        torch.from_numpy(np.concatenate(crows)).to(device),
        torch.from_numpy(np.concatenate(cols)).to(device),
        torch.from_numpy(np.concatenate(values)).to(device, dtype),
    )
    return sparse, ContextLookup(tuple(indexes), tuple(offsets))


@dataclass
class NgramTarget:
    """The n-gram target of one frozen unembedding: M = P W_U (and P b) of orders <= 2, and for
    orders >= 3 (or soft-capped logits: every order) the CSR rows of P gathered at the logits."""

    order: int
    m: torch.Tensor | None  # (V, d), (1, d) for the unigram; None when soft-capped
    bias_term: torch.Tensor | None  # (V,) or (1,) = P b, when the unembedding has a bias
    sparse: SparseRows | None = None  # orders >= 3, or all orders when soft-capped
    lookup: ContextLookup | None = None  # positions to rows of `sparse`
    unembed: torch.Tensor | None = None  # (V, d), to form the logits where `sparse` needs them
    bias: torch.Tensor | None = None
    softcap: float | None = None

    @classmethod
    def build(
        cls,
        tables: list[NgramCounts] | BigramCounts,
        unembed: torch.Tensor,
        bias: torch.Tensor | None = None,
        softcap: float | None = None,
    ) -> NgramTarget:
        """`tables` are the counts of orders 1..n (a BigramCounts: the bigram target, n = 2);
        `unembed` is the LM head weight cut to the tokenizer's vocabulary, shape (V, d).

        `softcap` is the model's final-logit soft-cap (`layout.logit_softcap`); when None it is
        read from `unembed`'s `logit_softcap` attribute if present (MaskedLM.unembed carries it),
        so a target built from a MaskedLM always matches that model's logits."""
        if isinstance(tables, BigramCounts):
            tables = [unigram_counts(tables), from_bigram_counts(tables)]
        check_chain(tables)
        vocab = tables[0].vocab_size
        if unembed.shape[0] != vocab:
            name = {n: target for target, n in NGRAM_ORDERS.items()}.get(len(tables), "n-gram")
            raise ValueError(f"unembedding has {unembed.shape[0]} rows, {name} table {vocab}")
        if softcap is None:
            softcap = getattr(unembed, SOFTCAP_ATTRIBUTE, None)
        unigram = _unigram_probabilities(tables[0])
        dtype, device = unembed.dtype, unembed.device
        m = bias_term = None
        if softcap is None:
            m, bias_term = _matrix_terms(tables[:2], unigram, unembed, bias)
        sparse_tables = tables if softcap is not None else tables[2:]
        if not sparse_tables:
            return cls(len(tables), m, bias_term)
        sparse, lookup = _stacked_rows(sparse_tables, unigram, _accumulation_dtype(dtype), device)
        return cls(
            len(tables),
            m,
            bias_term,
            sparse,
            lookup,
            unembed.detach(),
            None if bias is None else bias.detach(),
            None if softcap is None else float(softcap),
        )

    @property
    def capped(self) -> SparseRows | None:
        """The CSR rows when the logits are soft-capped (then every order goes through them)."""
        return self.sparse if self.softcap is not None else None

    def to(self, device: torch.device) -> NgramTarget:
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device)

        return NgramTarget(
            self.order,
            move(self.m),
            move(self.bias_term),
            None if self.sparse is None else self.sparse.to(device),
            None if self.lookup is None else self.lookup.to(device),
            move(self.unembed),
            move(self.bias),
            self.softcap,
        )

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The logits the sparse rows are gathered at (soft-capped if the model's are)."""
        assert self.unembed is not None
        logits = logits_from_hidden(hidden, self.unembed, self.bias)
        return logits if self.softcap is None else softcap_logits(logits, self.softcap)

    def expected_logit(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Σ_v P(v | context) · logit_v for every position of `input_ids` (the tokens at the
        hidden states' positions, whose last n − 1 give each context), without forming the
        logits; for soft-capped logits, through the logits of these positions."""
        if self.softcap is not None:
            return self.expected_from_logits(hidden, self.logits(hidden), input_ids)
        return self._matrix_term(hidden, input_ids)

    def expected_from_logits(
        self, hidden: torch.Tensor, logits: torch.Tensor, input_ids: torch.Tensor
    ) -> torch.Tensor:
        """`expected_logit` given the logits of these positions already (used when soft-capped:
        the logits are then not linear in the hidden states)."""
        if self.softcap is None:
            return self._matrix_term(hidden, input_ids)
        assert self.sparse is not None and self.lookup is not None
        return self.sparse.expected_from_logits(logits, self.lookup.rows(input_ids))

    def _matrix_term(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """h · M[context] (+ (P b)[context]): M's rows of orders <= 2 precomputed, those of
        orders >= 3 gathered from the CSR rows for this batch; a position whose longest
        context has order <= 2 takes the precomputed row."""
        assert self.m is not None
        context = input_ids if self.order >= 2 else torch.zeros_like(input_ids)
        m, bias_term = self.m[context], None if self.bias_term is None else self.bias_term[context]
        if self.sparse is not None:
            assert self.lookup is not None and self.unembed is not None
            rows = self.lookup.rows(input_ids)
            batch_m, batch_bias = self.sparse.batch_matrix(rows, self.unembed, self.bias)
            seen = rows >= 0
            m = torch.where(seen[..., None], batch_m.to(m.dtype), m)
            if bias_term is not None and batch_bias is not None:
                bias_term = torch.where(seen, batch_bias.to(bias_term.dtype), bias_term)
        expected = (hidden * m).sum(-1)
        return expected if bias_term is None else expected + bias_term


def _matrix_terms(
    tables: list[NgramCounts],
    unigram: torch.Tensor,
    unembed: torch.Tensor,
    bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """M = P W_U and P b of the unigram (one row) or bigram (V rows, unigram back-off)."""
    weight = unembed.detach().to("cpu", torch.float64)
    b = None if bias is None else bias.detach().to("cpu", torch.float64)
    if len(tables) == 1:
        m = (unigram @ weight)[None]
        bias_term = None if b is None else (unigram @ b)[None]
    else:
        vocab = tables[1].vocab_size
        crow, col, values = _token_rows(tables[1])
        p = _sparse_csr(*map(torch.from_numpy, (crow, col, values)), size=(vocab, vocab))
        unseen = torch.from_numpy(np.diff(crow) == 0)
        m = torch.sparse.mm(p, weight)
        m[unseen] = unigram @ weight
        bias_term = None
        if b is not None:
            bias_term = torch.sparse.mm(p, b[:, None]).squeeze(1)
            bias_term[unseen] = unigram @ b
    dtype, device = unembed.dtype, unembed.device
    return m.to(device, dtype), None if bias_term is None else bias_term.to(device, dtype)


# The bigram target and loss are the n = 2 case; these names stay for their callers.
BigramTarget = NgramTarget


def logits_from_hidden(
    hidden: torch.Tensor, unembed: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """W_U h (+ b) in float32 or wider, also under autocast (never in a half type)."""
    acc = _accumulation_dtype(torch.promote_types(hidden.dtype, unembed.dtype))
    with full_precision(hidden.device):
        logits = hidden.to(acc) @ unembed.to(acc).T
        return logits if bias is None else logits + bias.to(acc)


def ngram_cross_entropy(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    unembed: torch.Tensor,
    target: NgramTarget,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over positions of CE(P(· | context), softmax(W_U h + b)), in nats; `input_ids` are
    the tokens at the hidden states' positions (for the bigram, the current tokens).

    Both terms see the same hidden states at the same (float32 or wider) precision."""
    logits = logits_from_hidden(hidden, unembed, bias)
    if target.softcap is not None:  # soft-capped logits: the expectation goes through them
        assert target.sparse is not None
        capped = softcap_logits(logits.to(target.sparse.value.dtype), target.softcap)
        expected = target.expected_from_logits(hidden, capped, input_ids)
        return (torch.logsumexp(capped, dim=-1) - expected).mean()
    acc = logits.dtype
    with full_precision(hidden.device):
        expected = target.expected_from_logits(hidden.to(acc), logits, input_ids)
        return (torch.logsumexp(logits, dim=-1) - expected.to(acc)).mean()


bigram_cross_entropy = ngram_cross_entropy


def dense_ngram_cross_entropy(
    logits: torch.Tensor, input_ids: torch.Tensor, tables: list[NgramCounts]
) -> torch.Tensor:
    """The reference: soft-target cross-entropy with the dense target rows of every position."""
    target = dense_ngram_targets(tables, input_ids).to(logits.device, logits.dtype)
    return -(target * torch.log_softmax(logits, dim=-1)).sum(-1).mean()


def dense_bigram_cross_entropy(
    logits: torch.Tensor, current: torch.Tensor, dense: torch.Tensor
) -> torch.Tensor:
    """The reference: soft-target cross-entropy with the dense target rows P[current]."""
    target = dense[current].to(logits.dtype)
    return -(target * torch.log_softmax(logits, dim=-1)).sum(-1).mean()


def distillation_cross_entropy(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean CE(softmax(teacher), softmax(student)): the 'optimal pruning' target."""
    acc = _accumulation_dtype(torch.promote_types(student.dtype, teacher.dtype))
    with full_precision(student.device):
        target = torch.softmax(teacher.to(acc), dim=-1)
        return -(target * torch.log_softmax(student.to(acc), dim=-1)).sum(-1).mean()
