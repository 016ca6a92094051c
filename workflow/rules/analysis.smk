# Analyses of the trained masks: evaluation, then λ selection (a small JSON read by later stages).


rule evaluate:
    input:
        models=expand(rules.pretrain.output, model=MODELS),
        masks=[mask_path(*job) for job in MASK_JOBS],
        eval=rules.tokenize.output.eval,
        bigrams=rules.bigram_stats.output.bigrams,
        unigrams=rules.bigram_stats.output.unigrams,
        bigram_meta=rules.bigram_stats.output.meta,
    output:
        masks=f"{RUN_DIR}/metrics/masks.parquet",
        blocks=f"{RUN_DIR}/metrics/blocks.parquet",
    log:
        f"{RUN_DIR}/logs/evaluate.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/evaluate.tsv"
    conda:
        ENVIRONMENT
    threads: ALL_CORES
    resources:
        gpu=GPUS,
    params:
        config=CONFIG_FILE,
        data=folder_of("bigrams"),
        models=folder_of("models"),
        masks=folder_of("masks", levels=3),
        out=output_dir,
        settings=CFG.analysis.model_dump(),
        seed=CFG.seed,
    shell:
        "bsn evaluate --config {params.config} --models-dir {params.models}"
        " --masks-dir {params.masks} --data-dir {params.data}"
        " --output-dir {params.out} --log {log}"


rule select:
    input:
        rules.evaluate.output.masks,
    output:
        f"{RUN_DIR}/selection.json",
    log:
        f"{RUN_DIR}/logs/select.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/select.tsv"
    conda:
        ENVIRONMENT
    params:
        config=CONFIG_FILE,
        settings=CFG.analysis.model_dump(),
    shell:
        "bsn select --config {params.config} --metrics {input} --output {output} --log {log}"


rule overlap:
    input:
        models=expand(rules.pretrain.output, model=MODELS),
        masks=[mask_path(*job) for job in MASK_JOBS],
        selection=rules.select.output,
    output:
        overlap=f"{RUN_DIR}/metrics/overlap.parquet",
        null=f"{RUN_DIR}/metrics/overlap_null.parquet",
    log:
        f"{RUN_DIR}/logs/overlap.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/overlap.tsv"
    conda:
        ENVIRONMENT
    params:
        config=CONFIG_FILE,
        models=folder_of("models"),
        masks=folder_of("masks", levels=3),
        out=output_dir,
        settings=CFG.analysis.model_dump(),
        seed=CFG.seed,
    shell:
        "bsn overlap --config {params.config} --models-dir {params.models}"
        " --masks-dir {params.masks} --selection {input.selection}"
        " --output-dir {params.out} --log {log}"


rule ablate:
    input:
        models=expand(rules.pretrain.output, model=MODELS),
        masks=[mask_path(*job) for job in MASK_JOBS],
        selection=rules.select.output,
        eval=rules.tokenize.output.eval,
        bigrams=rules.bigram_stats.output.bigrams,
        unigrams=rules.bigram_stats.output.unigrams,
        bigram_meta=rules.bigram_stats.output.meta,
        tokenizer=rules.tokenizer.output.tokenizer,
        tokenizer_meta=rules.tokenizer.output.meta,
    output:
        ablations=f"{RUN_DIR}/metrics/ablations.parquet",
        generations=f"{RUN_DIR}/metrics/generations.parquet",
    log:
        f"{RUN_DIR}/logs/ablate.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/ablate.tsv"
    conda:
        ENVIRONMENT
    threads: ALL_CORES
    resources:
        gpu=GPUS,
    params:
        config=CONFIG_FILE,
        data=folder_of("bigrams"),
        tokenizer=folder_of("tokenizer"),
        models=folder_of("models"),
        masks=folder_of("masks", levels=3),
        out=output_dir,
        settings=CFG.analysis.model_dump(),
        seed=CFG.seed,
    shell:
        "bsn ablate --config {params.config} --models-dir {params.models}"
        " --masks-dir {params.masks} --selection {input.selection} --data-dir {params.data}"
        " --tokenizer {params.tokenizer} --output-dir {params.out} --log {log}"


rule residual:
    input:
        models=expand(rules.pretrain.output, model=MODELS),
        masks=[mask_path(*job) for job in MASK_JOBS],
        selection=rules.select.output,
        eval=rules.tokenize.output.eval,
        bigrams=rules.bigram_stats.output.bigrams,
        unigrams=rules.bigram_stats.output.unigrams,
        bigram_meta=rules.bigram_stats.output.meta,
    output:
        f"{RUN_DIR}/metrics/residual.parquet",
    log:
        f"{RUN_DIR}/logs/residual.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/residual.tsv"
    conda:
        ENVIRONMENT
    threads: ALL_CORES
    resources:
        gpu=GPUS,
    params:
        config=CONFIG_FILE,
        data=folder_of("bigrams"),
        models=folder_of("models"),
        masks=folder_of("masks", levels=3),
        settings=CFG.analysis.model_dump(),
        seed=CFG.seed,
    shell:
        "bsn residual --config {params.config} --models-dir {params.models}"
        " --masks-dir {params.masks} --selection {input.selection} --data-dir {params.data}"
        " --output {output} --log {log}"


if CHECKPOINTS:

    rule checkpoint_masks:
        input:
            model=f"{RUN_DIR}/models/{{model}}",
            train=rules.tokenize.output.train,
            eval=rules.tokenize.output.eval,
            bigrams=rules.bigram_stats.output.bigrams,
            unigrams=rules.bigram_stats.output.unigrams,
            bigram_meta=rules.bigram_stats.output.meta,
        output:
            masks=[
                f"{RUN_DIR}/checkpoints/{{model}}/step-{{step}}/bigram/lambda-{lam}.safetensors"
                for lam in CHECKPOINTS.lambdas
            ],
            metrics=checkpoint_metrics("{model}", "{step}"),
        log:
            f"{RUN_DIR}/logs/checkpoint_masks/{{model}}-step-{{step}}.log",
        benchmark:
            f"{RUN_DIR}/benchmarks/checkpoint_masks/{{model}}-step-{{step}}.tsv"
        conda:
            ENVIRONMENT
        threads: ALL_CORES
        resources:
            gpu=GPUS,
        params:
            config=CONFIG_FILE,
            data=folder_of("bigrams"),
            out=folder_of("metrics", of="output"),
            masks=CFG.masks.model_dump(),
            lambdas=CHECKPOINTS.lambdas,
            settings=CFG.analysis.model_dump(),
            seed=CFG.seed,
        shell:
            "bsn checkpoint-masks --config {params.config} --model {wildcards.model}"
            " --model-dir {input.model} --step {wildcards.step} --data-dir {params.data}"
            " --output-dir {params.out} --log {log}"

    rule checkpoints:
        input:
            [checkpoint_metrics(*job) for job in CHECKPOINT_JOBS],
        output:
            f"{RUN_DIR}/metrics/checkpoints.parquet",
        log:
            f"{RUN_DIR}/logs/checkpoints.log",
        benchmark:
            f"{RUN_DIR}/benchmarks/checkpoints.tsv"
        conda:
            ENVIRONMENT
        params:
            config=CONFIG_FILE,
            checkpoints=folder_of(0, levels=3),
            budgets=CHECKPOINTS.budgets,
        shell:
            "bsn checkpoints --config {params.config} --checkpoints-dir {params.checkpoints}"
            " --output {output} --log {log}"

    rule controls:
        input:
            models=expand(rules.pretrain.output, model=CHECKPOINTS.models),
            step0=[checkpoint_metrics(model, 0) for model in CHECKPOINTS.models],
            masks=rules.evaluate.output.masks,
            residual=rules.residual.output,
            selection=rules.select.output,
            train=rules.tokenize.output.train,
            eval=rules.tokenize.output.eval,
            bigrams=rules.bigram_stats.output.bigrams,
            unigrams=rules.bigram_stats.output.unigrams,
            bigram_meta=rules.bigram_stats.output.meta,
        output:
            controls=f"{RUN_DIR}/metrics/controls.parquet",
            masks=[
                f"{RUN_DIR}/controls/{model}/random-body/lambda-0.safetensors"
                for model in CHECKPOINTS.models
            ],
        log:
            f"{RUN_DIR}/logs/controls.log",
        benchmark:
            f"{RUN_DIR}/benchmarks/controls.tsv"
        conda:
            ENVIRONMENT
        threads: ALL_CORES
        resources:
            gpu=GPUS,
        params:
            config=CONFIG_FILE,
            data=folder_of("bigrams"),
            models=folder_of("models"),
            checkpoints=folder_of("step0", levels=3),
            metrics=folder_of("masks"),
            controls=folder_of("masks", levels=3, of="output"),
            masks=CFG.masks.model_dump(),
            settings=CFG.analysis.model_dump(),
            seed=CFG.seed,
        shell:
            "bsn controls --config {params.config} --models-dir {params.models}"
            " --checkpoints-dir {params.checkpoints} --metrics-dir {params.metrics}"
            " --selection {input.selection} --data-dir {params.data}"
            " --masks-output-dir {params.controls} --output {output.controls} --log {log}"


rule analysis:
    input:
        rules.evaluate.output,
        rules.select.output,
        rules.overlap.output,
        rules.ablate.output,
        rules.residual.output,
        [f"{RUN_DIR}/metrics/{name}.parquet" for name in ("checkpoints", "controls")]
        if CHECKPOINTS
        else [],
