# Mask training: one job per model × target (bigram | full) × λ label.


rule train_mask:
    input:
        model=f"{RUN_DIR}/models/{{model}}",
        train=rules.tokenize.output.train,
        bigrams=rules.bigram_stats.output.bigrams,
        unigrams=rules.bigram_stats.output.unigrams,
        bigram_meta=rules.bigram_stats.output.meta,
    output:
        mask=mask_path("{model}", "{target}", "{lam}"),
        log=f"{RUN_DIR}/masks/{{model}}/{{target}}/lambda-{{lam}}.json",
    log:
        f"{RUN_DIR}/logs/train_mask/{{model}}-{{target}}-{{lam}}.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/train_mask/{{model}}-{{target}}-{{lam}}.tsv"
    conda:
        ENVIRONMENT
    threads: ALL_CORES
    resources:
        gpu=GPUS,
    params:
        config=CONFIG_FILE,
        data=folder_of("bigrams"),
        settings=CFG.masks.model_dump(),
        seed=CFG.seed,
    shell:
        "bsn train-mask --config {params.config} --model {wildcards.model}"
        " --model-dir {input.model} --data-dir {params.data} --target {wildcards.target}"
        " --lambda {wildcards.lam} --output {output.mask} --log {log}"


rule masks:
    input:
        [mask_path(*job) for job in MASK_JOBS],
