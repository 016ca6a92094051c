"""The one factory of the tiny random causal LMs the tests build (GPT-NeoX, GPT-2, Llama).

Every family takes the same words: vocabulary, width, layers, heads, MLP width, positions, and a
seed set right before the model is built (so the weights are the same wherever it is called);
anything else goes to the family's transformers config as is.
"""

from __future__ import annotations

from typing import Any


def tiny_lm(
    family: str = "gpt_neox",
    *,
    vocab: int = 50,
    d: int = 16,
    layers: int = 2,
    heads: int = 2,
    ff: int | None = None,
    positions: int = 32,
    seed: int = 0,
    **config: Any,
) -> Any:
    """A seeded random model of `family`, in eval mode."""
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    if family == "gpt_neox":
        settings = GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=d,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ff or 4 * d,
            max_position_embeddings=positions,
            **config,
        )
        cls: Any = GPTNeoXForCausalLM
    elif family == "gpt2":
        settings = GPT2Config(
            vocab_size=vocab, n_embd=d, n_layer=layers, n_head=heads, n_inner=ff,
            n_positions=positions, **config,
        )  # fmt: skip
        cls = GPT2LMHeadModel
    elif family == "llama":
        settings = LlamaConfig(
            vocab_size=vocab,
            hidden_size=d,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ff or 4 * d,
            max_position_embeddings=positions,
            **config,
        )
        cls = LlamaForCausalLM
    else:
        raise ValueError(f"no tiny {family} model")
    torch.manual_seed(seed)
    return cls(settings).eval()
