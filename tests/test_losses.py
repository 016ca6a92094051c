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

from bigram_subnetworks.data.bigrams import BigramCounts, count_bigrams
from bigram_subnetworks.masks.losses import (
    BigramTarget,
    bigram_cross_entropy,
    bigram_matrix,
    dense_bigram_cross_entropy,
    dense_bigram_matrix,
    distillation_cross_entropy,
    logits_from_hidden,
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
