# Data stages: corpus -> tokenizer -> tokenize -> bigram_stats (no torch, no transformers).
# `params.settings` holds the config section a rule reads, so editing it reruns the rule.


rule corpus:
    input:
        corpus_inputs,
    output:
        documents=f"{CORPUS_DIR}/documents.parquet",
        manifest=f"{CORPUS_DIR}/manifest.json",
    log:
        f"{CORPUS_DIR}/logs/corpus.log",
    benchmark:
        f"{CORPUS_DIR}/logs/corpus.benchmark.tsv"
    conda:
        ENVIRONMENT
    params:
        config=CONFIG_FILE,
        out=output_dir,
        settings=CFG.corpus.model_dump(),
        seed=CFG.seed,
    shell:
        "bsn corpus --config {params.config} --output-dir {params.out} --log {log}"


rule tokenizer:
    input:
        documents=rules.corpus.output.documents,
    output:
        tokenizer=f"{TOKENIZER_DIR}/tokenizer.json",
        meta=f"{TOKENIZER_DIR}/meta.json",
    log:
        f"{TOKENIZER_DIR}/logs/tokenizer.log",
    benchmark:
        f"{TOKENIZER_DIR}/logs/tokenizer.benchmark.tsv"
    conda:
        ENVIRONMENT
    threads: ALL_CORES
    params:
        config=CONFIG_FILE,
        out=output_dir,
        settings=CFG.tokenizer.model_dump(),
    shell:
        "bsn tokenizer --config {params.config} --documents {input.documents}"
        " --output-dir {params.out} --log {log}"


rule tokenize:
    input:
        documents=rules.corpus.output.documents,
        tokenizer=rules.tokenizer.output.tokenizer,
        meta=rules.tokenizer.output.meta,
    output:
        train=f"{DATA_DIR}/tokens_train.parquet",
        eval=f"{DATA_DIR}/tokens_eval.parquet",
        summary=f"{DATA_DIR}/tokens.json",
    log:
        f"{DATA_DIR}/logs/tokenize.log",
    benchmark:
        f"{DATA_DIR}/logs/tokenize.benchmark.tsv"
    conda:
        ENVIRONMENT
    threads: ALL_CORES
    params:
        config=CONFIG_FILE,
        tokenizer_dir=lambda wildcards, input: os.path.dirname(input.tokenizer),
        out=output_dir,
        settings=CFG.data.model_dump(),
        seed=CFG.seed,
    shell:
        "bsn tokenize --config {params.config} --documents {input.documents}"
        " --tokenizer {params.tokenizer_dir} --output-dir {params.out} --log {log}"


rule bigram_stats:
    input:
        tokens=rules.tokenize.output.train,
        summary=rules.tokenize.output.summary,
    output:
        bigrams=f"{DATA_DIR}/bigrams.parquet",
        unigrams=f"{DATA_DIR}/unigrams.parquet",
        meta=f"{DATA_DIR}/bigrams.json",
    log:
        f"{DATA_DIR}/logs/bigram_stats.log",
    benchmark:
        f"{DATA_DIR}/logs/bigram_stats.benchmark.tsv"
    conda:
        ENVIRONMENT
    params:
        config=CONFIG_FILE,
        out=output_dir,
    shell:
        "bsn bigram-stats --config {params.config} --tokens {input.tokens}"
        " --output-dir {params.out} --log {log}"


rule data:
    input:
        rules.bigram_stats.output,
        rules.tokenize.output,
