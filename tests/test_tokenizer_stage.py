"""Tokenizer stage: train a BPE on the train split, or adopt a local pretrained one (no network)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from bigram_subnetworks.config import PretrainedTokenizer, TrainedTokenizer
from bigram_subnetworks.data.tokenizer import (
    EOS_TOKEN,
    build_tokenizer,
    load_tokenizer,
    vocab_size_of,
)
from bigram_subnetworks.errors import UserError
from bigram_subnetworks.io import sha256_file

WriteDocuments = Callable[[Path, list[tuple[str, str]]], Path]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach the Hub fails at once instead of downloading."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def assert_only(output_dir: Path, *names: str) -> None:
    """Exactly these files: no temporary files left behind."""
    assert sorted(p.name for p in output_dir.iterdir()) == sorted(names)


# ----------------------------------------------------------------------------- trained


def test_trained_tokenizer(
    tmp_path: Path, sotu_texts: list[str], write_documents: WriteDocuments
) -> None:
    # The eval split repeats a word the train split never has: training must not see it.
    eval_text = " zyzzyvaqq" * 500
    documents = write_documents(
        tmp_path / "documents.parquet", [("train", t) for t in sotu_texts] + [("eval", eval_text)]
    )
    out = tmp_path / "tok"
    cfg = TrainedTokenizer(source="train", name="bpe", vocab_size=500, min_frequency=2)
    meta = build_tokenizer(cfg, documents, out)

    assert_only(out, "tokenizer.json", "meta.json")
    assert json.loads((out / "meta.json").read_text()) == meta
    assert meta["name"] == "bpe" and meta["source"] == "train"
    assert meta["eos_token"] == EOS_TOKEN and meta["eos_id"] == 0
    assert 257 < meta["vocab_size"] <= 500
    assert meta["requested_vocab_size"] == 500 and meta["min_frequency"] == 2
    assert meta["documents_sha256"] == sha256_file(documents)

    loaded = load_tokenizer(out)
    assert loaded.eos_id == 0 and loaded.eos_token == EOS_TOKEN
    assert loaded.vocab_size == meta["vocab_size"] == vocab_size_of(loaded.tokenizer)
    assert loaded.tokenizer.token_to_id(EOS_TOKEN) == 0
    assert not any("zyzzyva" in token for token in loaded.tokenizer.get_vocab())
    text = "Fellow-Citizens of the Senate — café ✓"
    ids = loaded.tokenizer.encode(text, add_special_tokens=False).ids
    assert max(ids) < loaded.vocab_size and loaded.tokenizer.decode(ids) == text


def test_no_train_documents_is_a_user_error(
    tmp_path: Path, write_documents: WriteDocuments
) -> None:
    documents = write_documents(tmp_path / "documents.parquet", [("eval", "only eval text")])
    cfg = TrainedTokenizer(source="train", name="bpe", vocab_size=300)
    with pytest.raises(UserError, match="no train documents") as info:
        build_tokenizer(cfg, documents, tmp_path / "tok")
    assert str(documents) in str(info.value)
    assert not (tmp_path / "tok").exists()


def test_missing_documents_is_a_user_error(tmp_path: Path) -> None:
    cfg = TrainedTokenizer(source="train", name="bpe", vocab_size=300)
    with pytest.raises(UserError, match="file not found"):
        build_tokenizer(cfg, tmp_path / "documents.parquet", tmp_path / "tok")


# ----------------------------------------------------------------------------- pretrained


def save_pretrained_dir(
    root: Path, special: list[str], tokenizer_config: object | None = None
) -> Path:
    """A folder like a model's own: tokenizer.json (+ tokenizer_config.json when given)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(["a small corpus for a small tokenizer"] * 10, trainer=trainer)
    root.mkdir(parents=True)
    tokenizer.save(str(root / "tokenizer.json"))
    if tokenizer_config is not None:
        text = (
            tokenizer_config if isinstance(tokenizer_config, str) else json.dumps(tokenizer_config)
        )
        (root / "tokenizer_config.json").write_text(text)
    return root


def pretrained(model: Path, eos_token: str | None = None) -> PretrainedTokenizer:
    return PretrainedTokenizer(source="pretrained", name="x", model=str(model), eos_token=eos_token)


SPECIAL = ["<pad>", "<s>", "</s>"]


@pytest.mark.parametrize(
    "config",
    [{"eos_token": "</s>"}, {"eos_token": {"content": "</s>", "special": True}}],
    ids=["string", "added-token-dict"],
)
def test_pretrained_eos_from_tokenizer_config(tmp_path: Path, config: object) -> None:
    model = save_pretrained_dir(tmp_path / "model", SPECIAL, config)
    out = tmp_path / "tok"
    meta = build_tokenizer(pretrained(model), tmp_path / "unused.parquet", out)
    assert_only(out, "tokenizer.json", "meta.json")
    assert meta["source"] == "pretrained" and meta["model"] == str(model)
    assert meta["eos_token"] == "</s>" and meta["eos_id"] == 2
    assert meta["sha256"] == sha256_file(model / "tokenizer.json")
    original = Tokenizer.from_file(str(model / "tokenizer.json"))
    assert meta["vocab_size"] == vocab_size_of(original)
    loaded = load_tokenizer(out)
    assert (loaded.eos_token, loaded.eos_id) == ("</s>", 2)
    assert loaded.tokenizer.get_vocab() == original.get_vocab()


def test_pretrained_eos_override(tmp_path: Path) -> None:
    model = save_pretrained_dir(tmp_path / "model", SPECIAL, {"eos_token": "</s>"})
    meta = build_tokenizer(pretrained(model, eos_token="<s>"), tmp_path / "x", tmp_path / "tok")
    assert (meta["eos_token"], meta["eos_id"]) == ("<s>", 1)


def test_pretrained_default_eos_without_tokenizer_config(tmp_path: Path) -> None:
    model = save_pretrained_dir(tmp_path / "model", ["<pad>", EOS_TOKEN])
    meta = build_tokenizer(pretrained(model), tmp_path / "x", tmp_path / "tok")
    assert (meta["eos_token"], meta["eos_id"]) == (EOS_TOKEN, 1)


def test_pretrained_tokenizer_json_file(tmp_path: Path) -> None:
    model = save_pretrained_dir(tmp_path / "model", ["<pad>", EOS_TOKEN])
    meta = build_tokenizer(pretrained(model / "tokenizer.json"), tmp_path / "x", tmp_path / "tok")
    assert meta["eos_id"] == 1


@pytest.mark.parametrize(
    ("special", "config", "eos", "message"),
    [
        (SPECIAL, {"eos_token": "<|im_end|>"}, None, r"'<\|im_end\|>' is not in the vocabulary"),
        (SPECIAL, None, None, r"'<\|endoftext\|>' is not in the vocabulary"),
        (SPECIAL, {"eos_token": "</s>"}, "<eos>", r"'<eos>' is not in the vocabulary"),
        (SPECIAL, "{not json", None, "not valid JSON"),
    ],
    ids=["config-eos-missing", "default-eos-missing", "override-missing", "bad-config-json"],
)
def test_pretrained_missing_eos_is_a_user_error(
    tmp_path: Path, special: list[str], config: object, eos: str | None, message: str
) -> None:
    model = save_pretrained_dir(tmp_path / "model", special, config)
    with pytest.raises(UserError, match=message) as info:
        build_tokenizer(pretrained(model, eos), tmp_path / "x", tmp_path / "tok")
    assert str(model) in str(info.value)
    assert not (tmp_path / "tok").exists()


def test_pretrained_directory_without_tokenizer_json(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "tokenizer_config.json").write_text('{"eos_token": "</s>"}')
    with pytest.raises(UserError, match=r"no tokenizer\.json") as info:
        build_tokenizer(pretrained(model), tmp_path / "x", tmp_path / "tok")
    assert str(model) in str(info.value)
    assert not (tmp_path / "tok").exists()


def test_pretrained_invalid_tokenizer_json(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "tokenizer.json").write_text('{"version": "1.0", "model": 3}')
    with pytest.raises(UserError, match=r"not a valid tokenizers JSON file"):
        build_tokenizer(pretrained(model), tmp_path / "x", tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_pretrained_unknown_model_offline_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a local directory"):
        build_tokenizer(pretrained(tmp_path / "no-such-model"), tmp_path / "x", tmp_path / "tok")
