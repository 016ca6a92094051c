# Targets: `snakemake <target>` runs the pipeline up to it (the Makefile has one target each).
TARGETS = {spec.name: spec.targets for spec in SPECS}


def outputs_of(*stages):
    """Every output file of the given stages' jobs (stages a config does not have add none)."""
    return [path for stage in stages for path in TARGETS.get(stage, [])]


rule data:
    input:
        outputs_of("tokenize", "bigram_stats"),


rule models:
    input:
        outputs_of("pretrain"),


rule masks:
    input:
        outputs_of("train_mask"),


rule analysis:
    input:
        outputs_of("evaluate", "select", "overlap", "ablate", "residual", "checkpoints", "controls"),
