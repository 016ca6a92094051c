"""Mask-training losses: the exact bigram cross-entropy without a dense target, and distillation.

For a position with current token c and final hidden state h (after the final norm), the logits
are z = W_U h (+ b), cut to the tokenizer's vocabulary. The soft-target cross-entropy against the
bigram row P[c] is

    CE(P[c], softmax(z)) = logsumexp(z) − Σ_j P[c, j] z_j = logsumexp(z) − h · M[c] − (P b)[c]

with M = P W_U, computed once because W_U is frozen. No (batch, seq, vocab) target is ever built.

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

from bigram_subnetworks.data.bigrams import BigramCounts, context_totals


def bigram_matrix(counts: BigramCounts) -> torch.Tensor:
    """P(next | current) as a sparse CSR (V × V) matrix of the contexts seen in training.

    Rows of contexts never seen are empty here; `BigramTarget` backs them off to the unigram.
    """
    vocab = counts.vocab_size
    real = counts.prev < vocab
    prev = counts.prev[real].astype(np.int64)
    nxt = counts.next[real].astype(np.int64)
    totals = context_totals(counts)
    values = counts.count[real].astype(np.float64) / totals[prev]
    crow = np.zeros(vocab + 1, dtype=np.int64)
    np.cumsum(np.bincount(prev, minlength=vocab), out=crow[1:])
    # The indices are sorted and in range by construction, so the (costly) invariant check is
    # off explicitly; torch warns about beta CSR support once per process otherwise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(crow),
            torch.from_numpy(nxt),
            torch.from_numpy(values),
            size=(vocab, vocab),
            dtype=torch.float64,
            check_invariants=False,
        )


def unigram_distribution(counts: BigramCounts) -> torch.Tensor:
    """Token frequencies; uniform when there are no tokens at all (the last back-off)."""
    unigram = torch.from_numpy(counts.unigram.astype(np.float64))
    if unigram.sum() == 0:
        return torch.full((counts.vocab_size,), 1.0 / counts.vocab_size, dtype=torch.float64)
    return unigram / unigram.sum()


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
    dense = bigram_matrix(counts).to_dense()
    unseen = torch.from_numpy(context_totals(counts) == 0)
    dense[unseen] = unigram_distribution(counts)
    return dense


def softcap_logits(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """c·tanh(z / c), computed as transformers' Gemma2ForCausalLM does."""
    return torch.tanh(logits / cap) * cap


# The attribute by which an unembedding tensor (MaskedLM.unembed) carries its model's final-logit
# soft-cap to `BigramTarget.build` when the caller passes none.
SOFTCAP_ATTRIBUTE = "logit_softcap"


@dataclass
class SoftcappedBigram:
    """P as sparse rows, for soft-capped logits z = c·tanh((W_U h + b) / c)."""

    unembed: torch.Tensor  # (V, d)
    bias: torch.Tensor | None  # (V,)
    cap: float
    crow: torch.Tensor  # (V + 1,) int64: row r of P is entries crow[r] .. crow[r + 1]
    col: torch.Tensor  # (nnz,) int64
    value: torch.Tensor  # (nnz,) P entries, float32 (float64 for a float64 unembedding)
    unigram: torch.Tensor  # (V,) the back-off of contexts never seen
    unseen: torch.Tensor  # (V,) bool

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return softcap_logits(logits_from_hidden(hidden, self.unembed, self.bias), self.cap)

    def expected_from_logits(self, logits: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """Σ_v P[current, v] · logits_v for every position (shape of `current`), float32+."""
        flat = current.reshape(-1)
        z = logits.reshape(-1, logits.shape[-1])
        start = self.crow[flat]
        count = self.crow[flat + 1] - start
        total = int(count.sum())
        positions = torch.arange(flat.numel(), device=z.device)
        row = torch.repeat_interleave(positions, count, output_size=total)
        offset = torch.arange(total, device=z.device) - (torch.cumsum(count, 0) - count)[row]
        entry = start[row] + offset
        contribution = self.value[entry] * z[row, self.col[entry]].to(self.value.dtype)
        expected = torch.zeros(flat.numel(), dtype=self.value.dtype, device=z.device)
        expected = expected.index_add(0, row, contribution)
        backoff = torch.nonzero(self.unseen[flat]).squeeze(1)  # their sparse rows are empty
        if backoff.numel():  # (a product and a sum, not a matmul: autocast leaves them alone)
            unigram_term = (z[backoff].to(self.unigram.dtype) * self.unigram).sum(-1)
            expected = expected.index_add(0, backoff, unigram_term)
        return expected.reshape(current.shape)

    def cross_entropy(self, linear: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """Mean CE(P[current], softmax(capped logits)) from the uncapped logits W_U h + b."""
        logits = softcap_logits(linear.to(self.value.dtype), self.cap)
        expected = self.expected_from_logits(logits, current)
        return (torch.logsumexp(logits, dim=-1) - expected).mean()

    def to(self, device: torch.device) -> SoftcappedBigram:
        return SoftcappedBigram(
            self.unembed.to(device),
            None if self.bias is None else self.bias.to(device),
            self.cap,
            *(t.to(device) for t in (self.crow, self.col, self.value, self.unigram, self.unseen)),
        )


@dataclass
class BigramTarget:
    """Precomputed M = P W_U (and P b) for one frozen unembedding; for soft-capped logits, the
    sparse rows of P instead (`capped`, with `m` None)."""

    m: torch.Tensor | None  # (V, d); None when `capped` is set
    bias_term: torch.Tensor | None  # (V,) = P b, when the unembedding has a bias
    capped: SoftcappedBigram | None = None

    @classmethod
    def build(
        cls,
        counts: BigramCounts,
        unembed: torch.Tensor,
        bias: torch.Tensor | None = None,
        softcap: float | None = None,
    ) -> BigramTarget:
        """`unembed` is the LM head weight cut to the tokenizer's vocabulary, shape (V, d).

        `softcap` is the model's final-logit soft-cap (`layout.logit_softcap`); when None it is
        read from `unembed`'s `logit_softcap` attribute if present (MaskedLM.unembed carries it),
        so a target built from a MaskedLM always matches that model's logits."""
        vocab = counts.vocab_size
        if unembed.shape[0] != vocab:
            raise ValueError(f"unembedding has {unembed.shape[0]} rows, bigram table {vocab}")
        if softcap is None:
            softcap = getattr(unembed, SOFTCAP_ATTRIBUTE, None)
        if softcap is not None:
            return cls(None, None, cls._capped(counts, unembed, bias, float(softcap)))
        weight = unembed.detach().to("cpu", torch.float64)
        p = bigram_matrix(counts)
        unseen = torch.from_numpy(context_totals(counts) == 0)
        unigram = unigram_distribution(counts)
        m = torch.sparse.mm(p, weight)
        m[unseen] = unigram @ weight
        bias_term = None
        if bias is not None:
            b = bias.detach().to("cpu", torch.float64)
            bias_term = torch.sparse.mm(p, b[:, None]).squeeze(1)
            bias_term[unseen] = unigram @ b
        dtype, device = unembed.dtype, unembed.device
        return cls(
            m=m.to(device, dtype),
            bias_term=None if bias_term is None else bias_term.to(device, dtype),
        )

    @staticmethod
    def _capped(
        counts: BigramCounts, unembed: torch.Tensor, bias: torch.Tensor | None, cap: float
    ) -> SoftcappedBigram:
        p = bigram_matrix(counts)
        device, dtype = unembed.device, _accumulation_dtype(unembed.dtype)
        return SoftcappedBigram(
            unembed=unembed.detach(),
            bias=None if bias is None else bias.detach(),
            cap=cap,
            crow=p.crow_indices().to(device),
            col=p.col_indices().to(device),
            value=p.values().to(device, dtype),
            unigram=unigram_distribution(counts).to(device, dtype),
            unseen=torch.from_numpy(context_totals(counts) == 0).to(device),
        )

    def to(self, device: torch.device) -> BigramTarget:
        if self.capped is not None:
            return BigramTarget(None, None, self.capped.to(device))
        assert self.m is not None
        bias = None if self.bias_term is None else self.bias_term.to(device)
        return BigramTarget(self.m.to(device), bias)

    def expected_logit(self, hidden: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """Σ_v P[current, v] · logit_v for every position, without forming the logits (for
        soft-capped logits, through the logits of these positions)."""
        if self.capped is not None:
            return self.capped.expected_from_logits(self.capped.logits(hidden), current)
        assert self.m is not None
        expected = (hidden * self.m[current]).sum(-1)
        return expected if self.bias_term is None else expected + self.bias_term[current]


def logits_from_hidden(
    hidden: torch.Tensor, unembed: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """W_U h (+ b) in float32 or wider, also under autocast (never in a half type)."""
    acc = _accumulation_dtype(torch.promote_types(hidden.dtype, unembed.dtype))
    with full_precision(hidden.device):
        logits = hidden.to(acc) @ unembed.to(acc).T
        return logits if bias is None else logits + bias.to(acc)


def bigram_cross_entropy(
    hidden: torch.Tensor,
    current: torch.Tensor,
    unembed: torch.Tensor,
    target: BigramTarget,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over positions of CE(P[current], softmax(W_U h + b)), in nats.

    Both terms see the same hidden states at the same (float32 or wider) precision."""
    logits = logits_from_hidden(hidden, unembed, bias)
    if target.capped is not None:  # soft-capped logits: the expectation goes through them
        return target.capped.cross_entropy(logits, current)
    acc = logits.dtype
    with full_precision(hidden.device):
        expected = target.expected_logit(hidden.to(acc), current)
        return (torch.logsumexp(logits, dim=-1) - expected.to(acc)).mean()


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
