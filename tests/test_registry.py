"""The stage registry: one declaration per stage drives the CLI, Snakemake, DVC, data keys."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from bigram_subnetworks import artifacts as A
from bigram_subnetworks.config import (
    Config,
    UndeclaredConfigKey,
    effective_config_text,
    load_config,
    restrict,
    validate_config,
)
from bigram_subnetworks.frontends import dvc_yaml, rule_specs
from bigram_subnetworks.stages import (
    STAGES,
    all_masks,
    arguments,
    checkpoint_masks,
    config_fields,
    control_masks,
    data_keys,
    dvc_params,
    job_fields,
    job_id,
    key_parts,
    main_masks,
    settings,
    stages_for,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [ROOT / "params.yaml", *sorted((ROOT / "config").glob("*.yaml"))]


def raw_default() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_the_committed_dvc_yaml_is_generated_from_params_yaml() -> None:
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml(
        load_config(ROOT / "params.yaml"), "params.yaml"
    ), "dvc.yaml is stale: run `bsn dvc --config params.yaml`"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_gets_a_dvc_yaml_and_rules_for_every_job(path: Path) -> None:
    cfg = load_config(path)
    document = yaml.safe_load(dvc_yaml(cfg, path.relative_to(ROOT).as_posix()))
    stages = document["stages"]
    expected = {s.name for s in stages_for(cfg, "dvc")}
    assert set(stages) == expected
    assert ("checkpoints" in stages) == (cfg.checkpoints is not None)
    if cfg.lambdas is not None:
        trained = {**stages["train_mask"]["foreach"]}
        trained |= stages.get("train_ngram_mask", {}).get("foreach", {})
        assert len(trained) == len(all_masks(cfg))
    specs = {spec.name: spec for spec in rule_specs(cfg)}
    assert set(specs) == {s.name for s in stages_for(cfg, "snakemake")}
    assert "config" not in specs  # Snakemake writes the effective config when it reads the file
    # Every key a stage reads exists in the effective config (DVC would stop on a missing one).
    effective = yaml.safe_load(effective_config_text(cfg))
    for stage in stages_for(cfg, "dvc"):
        for job in stage.jobs(cfg):
            fields = job_fields(cfg, job)
            for key in dvc_params(stage, cfg, fields):
                node = effective
                for part in key.split(".") if key else []:
                    assert part in node, (stage.name, key)
                    node = node[part]


def test_the_final_checkpoint_reuses_the_main_grid_and_controls_are_mask_jobs() -> None:
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.checkpoints is not None
    (model,) = cfg.checkpoints.models
    final = cfg.models[model].final_step
    assert final in cfg.checkpoints.steps
    keys = {job["model"] for job in checkpoint_masks(cfg)}
    assert model in keys and f"{model}+step-{final}" not in keys
    embedded = [name for name, spec in cfg.models.items() if spec.source == "embedded"]
    assert {j["model"] for j in control_masks(cfg)} == {
        f"{name}+{variant}" for name in embedded for variant in ("step-0", "random-body")
    }  # the checkpoint model's step-0 λ = 0 mask is its trajectory's, trained once
    main = {tuple(j.values()) for j in main_masks(cfg)}
    everything = [tuple(j.values()) for j in all_masks(cfg)]
    assert len(everything) == len(set(everything))  # no mask is trained twice
    reused = {tuple(j.values()) for j in checkpoint_masks(cfg)} & main
    assert len(reused) == len(cfg.checkpoints.lambdas)


def test_checkpoint_lambdas_must_be_in_the_bigram_grid() -> None:
    raw = raw_default()
    raw["checkpoints"]["lambdas"] = ["0", "5"]
    with pytest.raises(Exception, match=r"checkpoints\.lambdas: \['5'\] not in lambdas\.bigram"):
        validate_config(raw)


def test_data_keys_name_what_produces_the_data() -> None:
    cfg = load_config(ROOT / "params.yaml")
    keys = data_keys(cfg)
    assert keys["corpus"].startswith("sotu-") and len(keys["corpus"]) == len("sotu-") + 8
    assert keys["tokenizer"].startswith("sotu-bpe4096-")
    assert keys["data"].startswith("sotu__sotu-bpe4096-")

    # Settings no data stage reads leave every key alone: runs share their data.
    raw = raw_default()
    raw["run"], raw["masks"]["lr"] = "other", 0.5
    raw["analysis"]["overlap_draws"] = 7
    assert data_keys(validate_config(raw)) == keys

    # Only the corpus differs: every key differs, though the names are the same.
    raw = raw_default()
    raw["corpus"] = {"name": "sotu", "source": "local", "path": "texts"}
    other = data_keys(validate_config(raw))
    assert all(other[k] != keys[k] for k in keys)
    assert other["tokenizer"].startswith("sotu-bpe4096-")

    # A sequence length only changes the token folder.
    raw = raw_default()
    raw["data"]["seq_len"] = 32
    shorter = data_keys(validate_config(raw))
    assert shorter["corpus"] == keys["corpus"] and shorter["tokenizer"] == keys["tokenizer"]
    assert shorter["data"] != keys["data"]

    # A model's own tokenizer does not depend on the corpus.
    raw = raw_default()
    raw["tokenizer"] = {"name": "pythia", "source": "pretrained", "model": "x/y"}
    a = data_keys(validate_config(raw))
    raw["corpus"]["eval_fraction"] = 0.2
    b = data_keys(validate_config(raw))
    assert a["tokenizer"] == b["tokenizer"] and a["corpus"] != b["corpus"]


@pytest.mark.parametrize(
    ("key", "value", "stages"),
    [
        ("analysis.overlap_draws", 5, {"overlap", "report"}),
        ("analysis.selection_tolerance", 0.1, {"select", "report"}),
        ("masks.lr", 0.5, {"train_mask", "report"}),
        ("analysis.residual_sequences", 64, {"residual", "report"}),
        ("checkpoints.budgets", [5, 50], {"checkpoints", "report"}),
        (
            "analysis.eval_sequences",
            100,
            {"evaluate", "ablate", "checkpoints", "controls", "report"},
        ),
    ],
)
def test_a_key_changes_the_settings_of_exactly_the_stages_that_read_it(
    key: str, value: Any, stages: set[str]
) -> None:
    cfg = load_config(ROOT / "params.yaml")
    raw = copy.deepcopy(raw_default())
    node = raw
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    changed_cfg = validate_config(raw)
    changed = set()
    for stage in stages_for(cfg, "snakemake"):
        for job in stage.jobs(cfg):
            fields = job_fields(cfg, job)
            if settings(stage, cfg, fields) != settings(stage, changed_cfg, fields):
                changed.add(stage.name)
    assert changed == stages


def test_a_stage_cannot_read_a_key_it_does_not_declare() -> None:
    cfg = load_config(ROOT / "params.yaml")
    stage = STAGES["overlap"]
    view: Config = restrict(cfg, [key_parts(k, {}) for k in stage.reads], stage.name)
    assert view.analysis.overlap_draws == cfg.analysis.overlap_draws
    assert view.seed == cfg.seed
    with pytest.raises(UndeclaredConfigKey, match=r"'analysis\.batch_size'"):
        _ = view.analysis.batch_size
    with pytest.raises(UndeclaredConfigKey, match="'masks'"):
        _ = view.masks
    mask_stage = STAGES["train_mask"]
    fields = job_fields(cfg, {"model": "neox-2x48+step-5", "target": "bigram", "lam": "0"})
    view = restrict(cfg, [key_parts(k, fields) for k in mask_stage.reads], mask_stage.name)
    assert view.models["neox-2x48"] == cfg.models["neox-2x48"]
    assert list(view.models) == ["neox-2x48"]
    with pytest.raises(UndeclaredConfigKey, match=r"'models\.neox-4x96'"):
        _ = view.models["neox-4x96"]


def test_dvc_tracks_a_dotted_model_name_through_its_parent() -> None:
    raw = raw_default()
    raw["models"] = {"gpt2-1.5b": raw["models"]["neox-2x80"]}
    raw["checkpoints"]["models"] = ["gpt2-1.5b"]
    cfg = validate_config(raw)
    stage = STAGES["pretrain"]
    fields = job_fields(cfg, {"model": "gpt2-1.5b"})
    assert dvc_params(stage, cfg, fields) == ["seed", "device", "threads", "models"]


def test_paths_parse_back_into_their_fields() -> None:
    path = A.MASK.render(run="r", model="m+step-3", target="bigram", lam="1e1")
    assert A.MASK.parse(path) == {"model": "m+step-3", "target": "bigram", "lam": "1e1"}
    assert A.MASK.parse("/elsewhere/" + path)["lam"] == "1e1"
    with pytest.raises(ValueError, match="does not end like"):
        A.MASK.parse("r/masks/m/bigram/mask.safetensors")
    assert A.split_model_key("m+random-body") == ("m", "random-body")
    assert A.model_key("m", None) == "m"


def test_the_slurm_profile_gives_gpus_to_exactly_the_torch_stages() -> None:
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    rules = profile["set-resources"]
    assert set(rules) | set(profile["set-threads"]) <= set(STAGES)  # no rule that does not exist
    with_gpu = {name for name, resources in rules.items() if resources.get("gpu")}
    assert with_gpu == {s.name for s in STAGES.values() if s.torch}
    assert all(rules[name]["slurm_partition"] == "gpu" for name in with_gpu)
    assert "fetch" not in rules  # a local rule: it runs where the network is


# ------------------------------------------------------------------------- n-gram targets


def ngram_config(**grids: list[str]) -> Config:
    raw = raw_default()
    raw["lambdas"] |= grids
    return validate_config(raw)


def test_ngram_grids_are_optional_and_each_needs_lambda_zero() -> None:
    default = load_config(ROOT / "params.yaml")
    assert default.lambdas is not None and list(default.lambdas.grids()) == ["bigram", "full"]
    cfg = ngram_config(trigram=["0", "1e1"], unigram=["0"])
    assert cfg.lambdas is not None
    assert list(cfg.lambdas.grids()) == ["unigram", "bigram", "trigram", "full"]
    for target in ("unigram", "trigram"):
        with pytest.raises(Exception, match=rf"lambdas\.{target}: add '0'"):
            ngram_config(**{target: ["1e1"]})
        with pytest.raises(Exception, match="each λ label may appear once"):
            ngram_config(**{target: ["0", "0"]})
    with pytest.raises(Exception, match=r"lambdas\.fourgram"):
        ngram_config(fourgram=["0"])


def test_the_default_has_no_ngram_stages_and_its_mask_jobs_keep_their_inputs() -> None:
    cfg = load_config(ROOT / "params.yaml")
    names = {stage.name for stage in stages_for(cfg, "dvc")}
    assert not {"ngram_stats", "train_ngram_mask"} & names
    assert set(STAGES["train_mask"].ports(cfg)) == {
        "model_dir",
        "tokens_train",
        "bigram_stats",
        "mask",
        "mask_log",
        "mask_curve",
    }
    assert "ngram_stats" not in STAGES["evaluate"].ports(cfg)


def test_ngram_targets_get_their_orders_tables_and_only_the_evaluation_reads_them() -> None:
    cfg = ngram_config(unigram=["0", "1e1"], trigram=["0", "1e1"])
    names = [stage.name for stage in stages_for(cfg, "snakemake")]
    assert names.index("ngram_stats") < names.index("train_ngram_mask")
    (counting,) = STAGES["ngram_stats"].jobs(cfg)
    assert counting == {"order": "3"}
    fields = job_fields(cfg, counting)
    outputs = {
        name: port.paths(cfg, fields) for name, port in STAGES["ngram_stats"].outputs.items()
    }
    data = fields["data"]
    assert outputs == {
        "ngram_stats": [f"data/{data}/ngrams-3.parquet"],
        "ngram_meta": [f"data/{data}/ngrams-3.json"],
    }
    assert STAGES["ngram_stats"].log(cfg).format(**fields) == f"data/{data}/logs/ngram_stats-3.log"

    # Trigram masks: their own stage, with the order-3 counts; every other mask: train_mask's
    # inputs, so a change of the trigram counts reruns no bigram mask.
    trigram = STAGES["train_ngram_mask"].jobs(cfg)
    assert {job["target"] for job in trigram} == {"trigram"}
    assert len(trigram) == 2 * len(cfg.models)
    others = STAGES["train_mask"].jobs(cfg)
    assert {job["target"] for job in others} == {"unigram", "bigram", "full"}
    assert {job_id(j) for j in trigram} | {job_id(j) for j in others} == {
        job_id(j) for j in all_masks(cfg)
    }
    job = job_fields(cfg, trigram[0])
    inputs = {
        name: port.paths(cfg, job)
        for name, port in STAGES["train_ngram_mask"].ports(cfg).items()
        if name in STAGES["train_ngram_mask"].inputs
    }
    assert inputs["ngram_stats"] == outputs["ngram_stats"]
    assert inputs["ngram_meta"] == outputs["ngram_meta"]
    assert set(STAGES["train_mask"].ports(cfg)) == {
        "model_dir",
        "tokens_train",
        "bigram_stats",
        "mask",
        "mask_log",
        "mask_curve",
    }
    # Checkpoints and controls stay bigram-only; the paper's analyses read bigram and full masks.
    assert {j["target"] for j in checkpoint_masks(cfg) + control_masks(cfg)} == {"bigram"}
    evaluated = STAGES["evaluate"].inputs["masks"].paths(cfg, config_fields(cfg))
    assert len(evaluated) == len(main_masks(cfg))
    for name in ("overlap", "ablate", "residual"):
        masks = STAGES[name].inputs["masks"].paths(cfg, config_fields(cfg))
        assert masks and all("/bigram/" in m or "/full/" in m for m in masks), name
    assert set(STAGES["evaluate"].ports(cfg)) >= {"ngram_stats", "ngram_meta"}


def test_the_cli_parses_an_order_as_a_number() -> None:
    from bigram_subnetworks.cli import build_parser

    cfg = ngram_config(trigram=["0"])
    stage = STAGES["ngram_stats"]
    fields = job_fields(cfg, stage.jobs(cfg)[0])
    args = build_parser().parse_args(
        [stage.command, "--config", "c.yaml", *arguments(stage, cfg, fields)]
    )
    assert args.order == 3


def test_the_ngram_config_is_the_defaults_study_at_three_orders() -> None:
    """config/ngram.yaml shares the default's data folders and model settings (so the same
    weights), writes under its own run name, and trains every order without the bigram-only
    checkpoint trajectories."""
    default = load_config(ROOT / "params.yaml")
    ngram = load_config(ROOT / "config" / "ngram.yaml")
    assert ngram.run != default.run
    assert data_keys(ngram) == data_keys(default)
    assert ngram.models == default.models and ngram.masks == default.masks
    assert ngram.analysis == default.analysis and ngram.seed == default.seed
    assert ngram.lambdas is not None
    assert list(ngram.lambdas.grids()) == ["unigram", "bigram", "trigram", "full"]
    assert ngram.checkpoints is None
    names = {stage.name for stage in stages_for(ngram, "snakemake")}
    assert {"ngram_stats", "train_ngram_mask", "ngrams"} <= names
    assert not {"checkpoints", "controls"} & names
