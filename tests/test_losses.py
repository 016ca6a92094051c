"""The fast bigram cross-entropy equals the dense-target reference; distillation equals torch's CE.

References are built here from plain Python loops over token arrays, so the tests do not trust
`dense_bigram_matrix` either. Random tables always include contexts never seen (back-off to the
unigram) and first tokens, which are counted after the start context (id = vocab size) that must
never act as a context.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bigram_subnetworks.data.bigrams import BigramCounts, context_totals, count_bigrams
from bigram_subnetworks.data.ngrams import count_ngrams, from_bigram_counts, unigram_counts
from bigram_subnetworks.masks.losses import (
    BigramTarget,
    NgramTarget,
    bigram_cross_entropy,
    bigram_matrix,
    dense_bigram_cross_entropy,
    dense_bigram_matrix,
    dense_ngram_cross_entropy,
    dense_ngram_targets,
    distillation_cross_entropy,
    logits_from_hidden,
    ngram_cross_entropy,
    softcap_logits,
    unigram_distribution,
)
from tiny_models import tiny_lm

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    pytest.mark.filterwarnings("ignore:Sparse:UserWarning"),
]


def reference_table(tokens: np.ndarray, vocab: int) -> np.ndarray:
    """P(next | current) from a Python loop; unseen contexts get the unigram (uniform if none)."""
    pairs = np.zeros((vocab, vocab))
    unigram = np.zeros(vocab)
    for seq in tokens.tolist():
        for token in seq:
            unigram[token] += 1
        for cur, nxt in itertools.pairwise(seq):
            pairs[cur, nxt] += 1
    back_off = unigram / unigram.sum() if unigram.sum() else np.full(vocab, 1.0 / vocab)
    table = np.empty((vocab, vocab))
    for cur in range(vocab):
        total = pairs[cur].sum()
        table[cur] = pairs[cur] / total if total else back_off
    return table


def reference_ce(hidden: np.ndarray, current: np.ndarray, unembed: np.ndarray, table: np.ndarray,
                 bias: np.ndarray | None = None) -> float:  # fmt: skip
    """Mean soft-target cross-entropy, computed directly in float64."""
    logits = hidden @ unembed.T + (0.0 if bias is None else bias)
    top = logits.max(-1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    return float(-(table[current] * log_probs).sum(-1).mean())


def random_tokens(rng: np.random.Generator, vocab: int, n_seq: int, seq_len: int) -> np.ndarray:
    """Tokens from a random subset of the vocabulary, plus one random id that appears only at the
    very end of the first sequence: a context never seen, but with a unigram count."""
    lonely = int(rng.integers(vocab))
    others = np.array([t for t in rng.permutation(vocab) if t != lonely])
    active = others[: rng.integers(1, vocab)]
    tokens = rng.choice(active, size=(n_seq, seq_len))
    tokens[0, -1] = lonely
    return tokens


def unseen_contexts(tokens: np.ndarray, vocab: int) -> list[int]:
    return sorted(set(range(vocab)) - set(tokens[:, :-1].ravel().tolist()))


# --- the bigram table ---------------------------------------------------------------------------


def test_hand_computed_table() -> None:
    """[0, 1, 0, 2]: P[0] = (0, ½, ½), P[1] = (1, 0, 0), context 2 unseen → unigram (½, ¼, ¼)."""
    counts = count_bigrams(np.array([[0, 1, 0, 2]]), 3)
    expected = torch.tensor([[0, 0.5, 0.5], [1, 0, 0], [0.5, 0.25, 0.25]], dtype=torch.float64)
    assert torch.equal(dense_bigram_matrix(counts), expected)
    sparse = bigram_matrix(counts)
    assert sparse.shape == (3, 3)
    assert torch.equal(sparse.to_dense()[2], torch.zeros(3, dtype=torch.float64))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    vocab=st.integers(2, 12),
    n_seq=st.integers(1, 4),
    seq_len=st.integers(1, 6),
)
def test_dense_table_matches_python_count(seed: int, vocab: int, n_seq: int, seq_len: int) -> None:
    """dense_bigram_matrix equals the loop reference; rows are distributions."""
    tokens = random_tokens(np.random.default_rng(seed), vocab, n_seq, seq_len)
    dense = dense_bigram_matrix(count_bigrams(tokens, vocab))
    assert dense.shape == (vocab, vocab)
    np.testing.assert_allclose(dense.numpy(), reference_table(tokens, vocab), rtol=0, atol=1e-12)
    np.testing.assert_allclose(dense.sum(1).numpy(), 1.0, atol=1e-12)


def test_start_context_is_never_a_context() -> None:
    """Dropping the start-context pairs changes nothing; the table and M have only V rows."""
    vocab = 5
    tokens = np.random.default_rng(3).integers(0, vocab, size=(6, 8))
    tokens[:, 0] = 4  # the last id opens every sequence: a pair (start, 4) in each
    assert set(tokens[:, :-1].ravel().tolist()) == set(range(vocab))  # every context seen
    counts = count_bigrams(tokens, vocab)
    assert counts.count[counts.prev == vocab].tolist() == [6]  # (start, 4), once per sequence
    real = counts.prev < vocab
    stripped = BigramCounts(
        counts.prev[real], counts.next[real], counts.count[real], counts.unigram, vocab, 6
    )
    dense = dense_bigram_matrix(counts)
    np.testing.assert_allclose(dense.numpy(), reference_table(tokens, vocab), atol=1e-12)
    assert torch.equal(dense, dense_bigram_matrix(stripped))
    unembed = torch.randn(vocab, 3, dtype=torch.float64)
    bias = torch.randn(vocab, dtype=torch.float64)
    target = BigramTarget.build(counts, unembed, bias)
    assert target.m.shape == (vocab, 3) and target.bias_term is not None
    assert target.bias_term.shape == (vocab,)
    torch.testing.assert_close(target.m, dense @ unembed, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(target.bias_term, dense @ bias, rtol=1e-12, atol=1e-12)
    assert torch.equal(target.m, BigramTarget.build(stripped, unembed, bias).m)
    with pytest.raises(IndexError):
        bigram_cross_entropy(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([vocab]),
                             unembed, target)  # fmt: skip


def test_length_one_sequences_give_unigram_rows() -> None:
    """With one token per sequence every pair is a start pair: every row is the unigram."""
    tokens = np.array([[1], [1], [3], [0]])
    dense = dense_bigram_matrix(count_bigrams(tokens, 4))
    assert torch.equal(dense, torch.tensor([[0.25, 0.5, 0.0, 0.25]] * 4, dtype=torch.float64))


def test_no_tokens_backs_off_to_uniform() -> None:
    """Without any tokens the unigram is undefined, so contexts back off to uniform."""
    counts = count_bigrams(np.zeros((0, 3), dtype=np.int64), 4)
    assert torch.equal(unigram_distribution(counts), torch.full((4,), 0.25, dtype=torch.float64))
    assert torch.equal(dense_bigram_matrix(counts), torch.full((4, 4), 0.25, dtype=torch.float64))
    target = BigramTarget.build(counts, torch.eye(4, dtype=torch.float64))
    assert torch.isfinite(target.m).all()


def test_build_refuses_wrong_unembedding_rows() -> None:
    counts = count_bigrams(np.array([[0, 1, 2]]), 3)
    with pytest.raises(ValueError, match="4 rows, bigram table 3"):
        BigramTarget.build(counts, torch.zeros(4, 2))


# --- the fast loss against the references ------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    vocab=st.integers(2, 12),
    d=st.integers(1, 6),
    n_seq=st.integers(1, 4),
    seq_len=st.integers(1, 6),
    with_bias=st.booleans(),
    scale=st.sampled_from([0.1, 1.0, 10.0]),
)
def test_fast_loss_equals_dense_reference(
    seed: int, vocab: int, d: int, n_seq: int, seq_len: int, with_bias: bool, scale: float
) -> None:
    """Fast CE = dense CE = loop reference (float64), over seen and unseen contexts alike."""
    rng = np.random.default_rng(seed)
    tokens = random_tokens(rng, vocab, n_seq, seq_len)
    counts = count_bigrams(tokens, vocab)
    unembed = rng.normal(size=(vocab, d))
    bias = rng.normal(size=vocab) if with_bias else None
    current = np.concatenate([rng.integers(0, vocab, size=8), unseen_contexts(tokens, vocab)])
    hidden = scale * rng.normal(size=(current.size, d))
    t_unembed, t_hidden, t_current = map(torch.from_numpy, (unembed, hidden, current))
    t_bias = None if bias is None else torch.from_numpy(bias)

    target = BigramTarget.build(counts, t_unembed, t_bias)
    fast = bigram_cross_entropy(t_hidden, t_current, t_unembed, target, t_bias)
    logits = logits_from_hidden(t_hidden, t_unembed, t_bias)
    dense = dense_bigram_cross_entropy(logits, t_current, dense_bigram_matrix(counts))
    expected = reference_ce(hidden, current, unembed, reference_table(tokens, vocab), bias)
    assert fast.dtype == torch.float64
    assert float(fast) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert float(dense) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_unseen_context_uses_unigram() -> None:
    """At an unseen context the loss is the cross-entropy against the unigram distribution."""
    tokens = np.array([[0, 1, 0, 1, 3]])  # context 3 unseen (last), 2 never occurs
    counts = count_bigrams(tokens, 4)
    unigram = torch.tensor([0.4, 0.4, 0.0, 0.2], dtype=torch.float64)
    unembed = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    hidden = torch.randn(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = BigramTarget.build(counts, unembed)
    loss = bigram_cross_entropy(hidden, torch.tensor([3, 2]), unembed, target)
    log_probs = torch.log_softmax(hidden @ unembed.T, -1)
    expected = -(unigram * log_probs).sum(-1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_bias", [False, True])
def test_gradients_match_dense(with_bias: bool) -> None:
    """d loss / d hidden of the fast loss equals the dense one, for (batch, seq, d) inputs."""
    rng = np.random.default_rng(11)
    vocab, d = 9, 5
    tokens = random_tokens(rng, vocab, 3, 7)
    counts = count_bigrams(tokens, vocab)
    unembed = torch.from_numpy(rng.normal(size=(vocab, d)))
    bias = torch.from_numpy(rng.normal(size=vocab)) if with_bias else None
    current = torch.from_numpy(rng.integers(0, vocab, size=(2, 6)))
    current[0, :2] = torch.tensor(unseen_contexts(tokens, vocab)[:2])
    hidden = torch.from_numpy(2 * rng.normal(size=(2, 6, d)))
    target = BigramTarget.build(counts, unembed, bias)

    h_fast = hidden.clone().requires_grad_(True)
    fast = bigram_cross_entropy(h_fast, current, unembed, target, bias)
    fast.backward()
    h_dense = hidden.clone().requires_grad_(True)
    logits = logits_from_hidden(h_dense, unembed, bias)
    dense = dense_bigram_cross_entropy(logits, current, dense_bigram_matrix(counts))
    dense.backward()
    assert fast.shape == () and dense.shape == ()
    torch.testing.assert_close(fast, dense, rtol=1e-10, atol=1e-10)
    assert h_fast.grad is not None and h_dense.grad is not None
    torch.testing.assert_close(h_fast.grad, h_dense.grad, rtol=1e-9, atol=1e-12)
    assert h_fast.grad.abs().max() > 1e-3


def test_float32_target_is_accurate() -> None:
    """A float32 unembedding gives a float32 M and a loss within 1e-5 (relative) of float64."""
    rng = np.random.default_rng(5)
    vocab, d = 40, 16
    tokens = random_tokens(rng, vocab, 20, 30)
    counts = count_bigrams(tokens, vocab)
    unembed = torch.from_numpy(rng.normal(size=(vocab, d)).astype(np.float32))
    bias = torch.from_numpy(rng.normal(size=vocab).astype(np.float32))
    hidden = torch.from_numpy(3 * rng.normal(size=(4, 25, d)).astype(np.float32))
    current = torch.from_numpy(rng.integers(0, vocab, size=(4, 25)))
    target = BigramTarget.build(counts, unembed, bias)
    assert target.m.dtype == torch.float32
    moved = target.to(torch.device("cpu"))
    assert torch.equal(moved.m, target.m) and moved.bias_term is not None
    loss = bigram_cross_entropy(hidden, current, unembed, moved, bias)
    expected = reference_ce(
        hidden.double().numpy(), current.numpy(), unembed.double().numpy(),
        reference_table(tokens, vocab), bias.double().numpy(),
    )  # fmt: skip
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(expected, rel=1e-5)


# --- distillation -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_distillation_equals_torch_soft_target_ce(dtype: torch.dtype) -> None:
    """distillation_cross_entropy = F.cross_entropy with probability targets, values and grads."""
    gen = torch.Generator().manual_seed(2)
    student = (3 * torch.randn(2, 5, 11, generator=gen)).to(dtype).requires_grad_(True)
    teacher = (3 * torch.randn(2, 5, 11, generator=gen)).to(dtype)
    loss = distillation_cross_entropy(student, teacher)
    assert loss.dtype == dtype
    expected = torch.nn.functional.cross_entropy(
        student.reshape(-1, 11), torch.softmax(teacher, -1).reshape(-1, 11)
    )
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(loss, expected, rtol=tol, atol=tol)
    (grad,) = torch.autograd.grad(loss, student)
    manual = (torch.softmax(student, -1) - torch.softmax(teacher, -1)).detach() / 10
    torch.testing.assert_close(grad, manual, rtol=tol, atol=tol)


def test_distillation_minimum_is_teacher_entropy() -> None:
    """CE(teacher, student) ≥ H(teacher), with equality when the student copies the teacher."""
    gen = torch.Generator().manual_seed(4)
    teacher = torch.randn(6, 9, generator=gen)
    probs = torch.softmax(teacher, -1)
    entropy = -(probs * probs.log()).sum(-1).mean()
    torch.testing.assert_close(distillation_cross_entropy(teacher, teacher), entropy)
    other = distillation_cross_entropy(torch.randn(6, 9, generator=gen), teacher)
    assert float(other) > float(entropy) + 1e-3
    half = distillation_cross_entropy(teacher.bfloat16(), teacher.bfloat16())
    assert half.dtype == torch.float32


# --- bf16 autocast --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def offset_lm_batch() -> tuple[object, BigramTarget, torch.Tensor]:
    """A tiny random GPT-NeoX whose logits share a large offset (GPT-2's sit near −60 to −100),
    a bigram table counted from a Zipfian bigram process, and a batch of that process."""

    from bigram_subnetworks.masks.train import MaskedLM

    vocab, d = 256, 32
    rng = np.random.default_rng(0)
    zipf = 1 / np.arange(1, vocab + 1)
    zipf /= zipf.sum()
    successors = np.stack([rng.permutation(vocab) for _ in range(vocab)])
    tokens = np.empty((16, 32), dtype=np.int64)
    tokens[:, 0] = rng.choice(vocab, size=16, p=zipf)
    for t in range(1, tokens.shape[1]):
        tokens[:, t] = successors[tokens[:, t - 1], rng.choice(vocab, size=16, p=zipf)]
    counts = count_bigrams(tokens, vocab)
    model = tiny_lm(vocab=vocab, d=d, heads=4, ff=64, positions=64, rotary_pct=0.25)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # Every final hidden state contains the norm's bias b; a shared row part u with u · b = −60
        # shifts all logits of a position alike, which the exact cross-entropy ignores.
        b = torch.randn(d, generator=gen)
        model.gpt_neox.final_layer_norm.bias.copy_(b)
        spread = 0.5 * torch.randn(vocab, d, generator=gen)
        model.get_output_embeddings().weight.copy_(spread - 60.0 * b / b.dot(b))
    lm = MaskedLM(model, vocab)
    return lm, BigramTarget.build(counts, lm.unembed), torch.from_numpy(tokens[:8])


def test_bf16_autocast_bigram_loss_matches_float32(
    offset_lm_batch: tuple[object, BigramTarget, torch.Tensor],
) -> None:
    """Under bf16 autocast the loss head runs in float32: the masked model's bigram loss agrees
    with the float32 one to 1e-3 nats (bf16 logits in the logsumexp were off by ~5e-3)."""
    from bigram_subnetworks.masks.train import target_loss

    lm, target, batch = offset_lm_batch
    soft = lm.soft_masks({n: torch.zeros(lm.layout.shapes[n]) for n in lm.layout.masked}, 1.0)
    exact = target_loss(lm, "bigram", batch, soft, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = target_loss(lm, "bigram", batch, soft, target)
        hidden = lm.hidden(batch, soft)
        head_only = bigram_cross_entropy(hidden, batch, lm.unembed, target)
    assert half.dtype == torch.float32
    assert abs(float(half) - float(exact)) < 1e-3
    # With the same hidden states, autocast changes nothing in the head.
    reference = bigram_cross_entropy(hidden.double(), batch, lm.unembed.double(), target)
    assert float(head_only) == pytest.approx(float(reference), abs=1e-5)


def test_bf16_autocast_distillation_head_is_float32(
    offset_lm_batch: tuple[object, BigramTarget, torch.Tensor],
) -> None:
    """The full-model target under bf16 autocast: student and teacher bodies run in bf16, their
    logits and the cross-entropy in float32, so the loss equals a float64 head on the same hidden
    states (bf16 logits were off by ~1e-2 nats)."""
    from bigram_subnetworks.masks.train import target_loss

    lm, _, batch = offset_lm_batch
    soft = lm.soft_masks({n: torch.zeros(lm.layout.shapes[n]) for n in lm.layout.masked}, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = target_loss(lm, "full", batch, soft, None)
        student = lm.hidden(batch, soft)
        teacher = lm.body(input_ids=batch).last_hidden_state
        logits_dtype = lm.logits(student).dtype
    unembed = lm.unembed.double()
    reference = distillation_cross_entropy(
        student.double() @ unembed.T, teacher.double() @ unembed.T
    )
    assert float(half) == pytest.approx(float(reference), abs=1e-5)
    assert half.dtype == logits_dtype == torch.float32


# --- n-gram targets -----------------------------------------------------------------------------


def reference_ngram_targets(tokens: np.ndarray, vocab: int, order: int,
                            queries: np.ndarray) -> np.ndarray:  # fmt: skip
    """P(· | longest seen suffix context) of every query position, from dict counts in a loop."""
    counts: dict[tuple[int, ...], np.ndarray] = {}
    for seq in tokens.tolist():
        padded = [vocab] * (order - 1) + seq
        for t, token in enumerate(seq):
            for n in range(1, order + 1):
                context = tuple(padded[t + order - n : t + order - 1])
                counts.setdefault(context, np.zeros(vocab))[token] += 1
    uniform = np.full(vocab, 1.0 / vocab)
    out = np.empty((*queries.shape, vocab))
    for b, seq in enumerate(queries.tolist()):
        padded = [vocab] * (order - 1) + seq
        for t in range(len(seq)):
            row = counts.get((), np.zeros(vocab))
            out[b, t] = row / row.sum() if row.sum() else uniform
            for n in range(2, order + 1):
                context = tuple(padded[t + order - n + 1 : t + order])
                if context in counts:
                    out[b, t] = counts[context] / counts[context].sum()
    return out


def ngram_tables(tokens: np.ndarray, vocab: int, order: int) -> list:
    return [count_ngrams(tokens, vocab, n) for n in range(1, order + 1)]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    order=st.integers(1, 4),
    vocab=st.integers(2, 9),
    d=st.integers(1, 5),
    seq_len=st.integers(1, 7),
    with_bias=st.booleans(),
    softcap=st.sampled_from([None, 2.0]),
)
def test_ngram_loss_equals_dense_reference(
    seed: int, order: int, vocab: int, d: int, seq_len: int, with_bias: bool, softcap: float | None
) -> None:
    """Fast CE = dense CE = loop reference (float64) for every order, with a bias, a soft-cap and
    contexts never seen (queries are random: most long contexts back off)."""
    rng = np.random.default_rng(seed)
    tokens = random_tokens(rng, vocab, 3, seq_len)
    tables = ngram_tables(tokens, vocab, order)
    unembed = torch.from_numpy(rng.normal(size=(vocab, d)))
    bias = torch.from_numpy(rng.normal(size=vocab)) if with_bias else None
    width = min(seq_len, 5)
    seen_part = tokens[:1, :width].astype(np.int64)
    queries = torch.from_numpy(np.concatenate([seen_part, rng.integers(0, vocab, (1, width))]))
    hidden = torch.from_numpy(2 * rng.normal(size=(*queries.shape, d))).requires_grad_(True)
    target = NgramTarget.build(tables, unembed, bias, softcap)
    fast = ngram_cross_entropy(hidden, queries, unembed, target, bias)
    fast.backward()
    logits = logits_from_hidden(hidden, unembed, bias)
    if softcap is not None:
        logits = softcap_logits(logits, softcap)
    want = torch.from_numpy(reference_ngram_targets(tokens, vocab, order, queries.numpy()))
    expected = -(want * torch.log_softmax(logits, -1)).sum(-1).mean()
    dense = dense_ngram_cross_entropy(logits, queries, tables)
    assert fast.dtype == torch.float64
    torch.testing.assert_close(fast, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(dense, expected, rtol=1e-9, atol=1e-9)
    assert torch.allclose(dense_ngram_targets(tables, queries), want, rtol=0, atol=1e-15)
    grad_fast = hidden.grad.clone()
    hidden.grad = None
    expected.backward()
    torch.testing.assert_close(grad_fast, hidden.grad, rtol=1e-8, atol=1e-10)


def todays_bigram_loss(
    counts: BigramCounts,
    hidden: torch.Tensor,
    current: torch.Tensor,
    unembed: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """The bigram loss as it was computed before n-gram targets (M = P W_U from the bigram
    fields, unseen contexts set to the unigram row), to check n = 2 still gives it bit for bit."""
    vocab = counts.vocab_size
    real = counts.prev < vocab
    prev = counts.prev[real].astype(np.int64)
    totals = context_totals(counts)
    values = counts.count[real].astype(np.float64) / totals[prev]
    crow = np.zeros(vocab + 1, dtype=np.int64)
    np.cumsum(np.bincount(prev, minlength=vocab), out=crow[1:])
    col = torch.from_numpy(counts.next[real].astype(np.int64))
    p = torch.sparse_csr_tensor(
        torch.from_numpy(crow), col, torch.from_numpy(values), size=(vocab, vocab)
    )
    unseen = torch.from_numpy(totals == 0)
    unigram = torch.from_numpy(counts.unigram.astype(np.float64))
    unigram = unigram / unigram.sum()
    weight = unembed.detach().double()
    m = torch.sparse.mm(p, weight)
    m[unseen] = unigram @ weight
    m = m.to(unembed.dtype)
    logits = hidden.float() @ unembed.float().T
    expected = (hidden.float() * m[current]).sum(-1)
    if bias is not None:
        b = bias.detach().double()
        bias_term = torch.sparse.mm(p, b[:, None]).squeeze(1)
        bias_term[unseen] = unigram @ b
        logits = logits + bias.float()
        expected = expected + bias_term.to(bias.dtype)[current]
    return (torch.logsumexp(logits, dim=-1) - expected).mean()


@pytest.mark.parametrize("with_bias", [False, True])
def test_order_two_is_todays_bigram_loss_bit_for_bit(with_bias: bool) -> None:
    rng = np.random.default_rng(3)
    vocab, d = 50, 8
    tokens = random_tokens(rng, vocab, 10, 20)
    counts = count_bigrams(tokens, vocab)
    unembed = torch.from_numpy(rng.normal(size=(vocab, d)).astype(np.float32))
    bias = torch.from_numpy(rng.normal(size=vocab).astype(np.float32)) if with_bias else None
    hidden = torch.from_numpy(rng.normal(size=(4, 16, d)).astype(np.float32))
    ids = torch.from_numpy(rng.integers(0, vocab, size=(4, 16)))
    ids[0, :3] = torch.tensor(unseen_contexts(tokens, vocab)[:3])
    tables = [unigram_counts(counts), from_bigram_counts(counts)]
    assert tables[1].order == 2 and np.array_equal(
        ngram_tables(tokens, vocab, 2)[1].count, tables[1].count
    )
    new = ngram_cross_entropy(hidden, ids, unembed, NgramTarget.build(tables, unembed, bias), bias)
    old = todays_bigram_loss(counts, hidden, ids, unembed, bias)
    assert torch.equal(new, old)
    via_counts = BigramTarget.build(counts, unembed, bias)
    assert torch.equal(bigram_cross_entropy(hidden, ids, unembed, via_counts, bias), old)


def test_float32_trigram_target_is_accurate_and_moves() -> None:
    """A float32 unembedding gives a float32 trigram loss within 1e-5 of the float64 reference;
    `.to` keeps every part."""
    rng = np.random.default_rng(8)
    vocab, d = 40, 16
    tokens = random_tokens(rng, vocab, 20, 30)
    tables = ngram_tables(tokens, vocab, 3)
    unembed = torch.from_numpy(rng.normal(size=(vocab, d)).astype(np.float32))
    bias = torch.from_numpy(rng.normal(size=vocab).astype(np.float32))
    hidden = torch.from_numpy(3 * rng.normal(size=(4, 25, d)).astype(np.float32))
    ids = torch.from_numpy(np.concatenate([tokens[:2, :25], rng.integers(0, vocab, (2, 25))]))
    target = NgramTarget.build(tables, unembed, bias).to(torch.device("cpu"))
    assert target.sparse is not None and target.capped is None and target.m is not None
    assert target.sparse.value.dtype == torch.float32
    loss = ngram_cross_entropy(hidden, ids, unembed, target, bias)
    logits = logits_from_hidden(hidden.double(), unembed.double(), bias.double())
    expected = dense_ngram_cross_entropy(logits, ids, tables)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    per_position = torch.logsumexp(logits, -1) - target.expected_logit(hidden, ids).double()
    assert float(per_position.mean()) == pytest.approx(float(expected), rel=1e-5)
