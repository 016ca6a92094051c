# Targets: `snakemake <target>` runs the pipeline up to it (the Makefile has one target each).
rule data:
    input:
        outputs_of("tokenize", "bigram_stats", "ngram_stats"),


rule models:
    input:
        outputs_of("pretrain"),


rule masks:
    input:
        outputs_of("train_mask", "train_ngram_mask"),


rule analysis:
    input:
        outputs_of(
            "evaluate",
            "select",
            "overlap",
            "ablate",
            "residual",
            "checkpoints",
            "controls",
        ),
