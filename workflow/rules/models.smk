# Model stage: pretrain embedded models here; record Hub commits; check local model folders.


rule pretrain:
    input:
        train=rules.tokenize.output.train,
        eval=rules.tokenize.output.eval,
        bigrams=rules.bigram_stats.output.bigrams,
        unigrams=rules.bigram_stats.output.unigrams,
        bigram_meta=rules.bigram_stats.output.meta,
        tokenizer=rules.tokenizer.output.tokenizer,
        tokenizer_meta=rules.tokenizer.output.meta,
    output:
        directory(f"{RUN_DIR}/models/{{model}}"),
    log:
        f"{RUN_DIR}/logs/pretrain/{{model}}.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/pretrain/{{model}}.tsv"
    conda:
        ENVIRONMENT
    threads: ALL_CORES
    resources:
        gpu=GPUS,
    params:
        config=CONFIG_FILE,
        data=folder_of("bigrams"),
        tokenizer=folder_of("tokenizer"),
        settings=lambda wildcards: CFG.models[wildcards.model].model_dump(),
        seed=CFG.seed,
    shell:
        "bsn pretrain --config {params.config} --model {wildcards.model}"
        " --data-dir {params.data} --tokenizer {params.tokenizer} --output-dir {output}"
        " --log {log}"


rule models:
    input:
        expand(rules.pretrain.output, model=MODELS),
