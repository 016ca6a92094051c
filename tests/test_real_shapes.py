"""The real-model code path at the real shapes: random Pythia-70M- and GPT-2-small-shaped models,
saved locally and configured as `source: local`, go through the model stage, a few mask-training
steps and the evaluation, exactly as Hub models do (the Hub only adds the download)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

from bigram_subnetworks.cli import main
from bigram_subnetworks.config import DataSettings, TrainedTokenizer
from bigram_subnetworks.data.bigrams import build_bigram_stats
from bigram_subnetworks.data.tokenize import tokenize_corpus
from bigram_subnetworks.data.tokenizer import build_tokenizer, load_tokenizer
from bigram_subnetworks.masks.toolkit import load_mask

# Masked weights 12·L·d², as the paper's Table 1 counts them.
SHAPES = {
    "pythia-70m": (
        lambda: GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=50304,
                hidden_size=512,
                num_hidden_layers=6,
                num_attention_heads=8,
                intermediate_size=2048,
                max_position_embeddings=2048,
                rotary_pct=0.25,
                use_parallel_residual=True,
            )
        ),
        18_874_368,
    ),
    "gpt2-small": (
        lambda: GPT2LMHeadModel(GPT2Config(n_embd=768, n_layer=12, n_head=12, vocab_size=50257)),
        84_934_656,
    ),
}


@pytest.fixture(scope="module")
def data_dir(
    tmp_path_factory: pytest.TempPathFactory,
    sotu_texts: list[str],
    write_documents: Callable[[Path, list[tuple[str, str]]], Path],
) -> Path:
    root = tmp_path_factory.mktemp("real-shapes")
    documents = write_documents(
        root / "documents.parquet",
        [("train", text) for text in sotu_texts[:4]] + [("eval", sotu_texts[4])],
    )
    build_tokenizer(TrainedTokenizer(name="t", source="train"), documents, root / "tokenizer")
    settings = DataSettings(seq_len=32, max_train_sequences=200, max_eval_sequences=8)
    tokenize_corpus(documents, load_tokenizer(root / "tokenizer"), settings, 0, root / "tokens")
    build_bigram_stats(root / "tokens" / "tokens_train.parquet", root / "tokens")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SHAPES))
def test_a_real_shaped_local_model_trains_and_evaluates(
    name: str, data_dir: Path, tmp_path: Path
) -> None:
    build, masked = SHAPES[name]
    torch.manual_seed(0)
    build().save_pretrained(tmp_path / "weights")  # safetensors, as on the Hub
    config = {
        "run": "real-shapes",
        "device": "cpu",
        "corpus": {"name": "c", "source": "sotu"},
        "tokenizer": {"name": "t", "source": "pretrained", "model": str(data_dir / "tokenizer")},
        "data": {"seq_len": 32},
        "models": {name: {"source": "local", "path": str(tmp_path / "weights")}},
        "masks": {"lr": 0.05, "batch_size": 2, "max_steps": 3, "save_every": 2},
        "lambdas": {"bigram": ["0", "1e1"], "full": ["1e1"]},
        "analysis": {"eval_sequences": 4, "batch_size": 2},
    }
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    common = ["--config", str(config_file)]
    tokens, run_dir = data_dir / "tokens", tmp_path / "run"
    train = tokens / "tokens_train.parquet"
    model_dir = run_dir / "models" / name

    data = ["--bigram-stats", str(tokens)]
    assert main(["fetch", *common, "--model", name, "--model-dir", str(model_dir)]) == 0
    masks = []
    for target in ("bigram", "full"):
        output = run_dir / "masks" / name / target / "lambda-1e1.safetensors"
        argv = ["train-mask", *common, "--model", name, "--target", target, "--lambda", "1e1"]
        argv += ["--model-dir", str(model_dir), "--tokens-train", str(train), *data]
        argv += ["--mask", str(output), "--mask-log", str(output.with_suffix(".json"))]
        argv += ["--mask-curve", str(output.with_suffix(".curve.csv"))]
        assert main([*argv, "--threads", "1"]) == 0
        mask, meta = load_mask(output)
        assert sum(t.numel() for t in mask.values()) == masked
        assert meta["model"] == name and meta["steps"] == 3
        assert json.loads(output.with_suffix(".json").read_text())["attempts"] == 1
        masks.append(str(output))

    metrics = run_dir / "metrics"
    argv = ["evaluate", *common, "--models", str(model_dir), "--masks", *masks, *data]
    argv += ["--tokens-eval", str(tokens / "tokens_eval.parquet")]
    argv += ["--mask-metrics", str(metrics / "masks.parquet")]
    argv += ["--mask-replicates", str(metrics / "masks_replicates.parquet")]
    assert main([*argv, "--blocks", str(metrics / "blocks.parquet")]) == 0
    rows = pq.read_table(metrics / "masks.parquet").to_pylist()
    kept = {(r["target"], r["lambda"]): r["value"] for r in rows if r["metric"] == "kept"}
    assert kept[("reference", "neginf")] == masked and kept[("reference", "inf")] == 0
    trained = {("bigram", "1e1"), ("full", "1e1")}
    assert set(kept) == {("reference", "neginf"), ("reference", "inf"), *trained}
