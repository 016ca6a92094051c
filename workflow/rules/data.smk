# Data stages: corpus -> tokenizer -> tokenize -> bigram_stats (no torch, no transformers).


rule corpus:
    input:
        corpus_inputs,
    output:
        documents=f"{CORPUS_DIR}/documents.parquet",
        manifest=f"{CORPUS_DIR}/manifest.json",
    params:
        settings=CFG.corpus.model_dump(),
        seed=CFG.seed,
    log:
        f"{CORPUS_DIR}/logs/corpus.log",
    benchmark:
        f"{CORPUS_DIR}/logs/corpus.benchmark.tsv"
    shell:
        "bsn corpus --config {CONFIG_FILE} --output-dir {CORPUS_DIR} --log {log}"


rule tokenizer:
    input:
        documents=rules.corpus.output.documents,
    output:
        tokenizer=f"{TOKENIZER_DIR}/tokenizer.json",
        meta=f"{TOKENIZER_DIR}/meta.json",
    params:
        settings=CFG.tokenizer.model_dump(),
    log:
        f"{TOKENIZER_DIR}/logs/tokenizer.log",
    benchmark:
        f"{TOKENIZER_DIR}/logs/tokenizer.benchmark.tsv"
    threads: workflow.cores
    shell:
        "bsn tokenizer --config {CONFIG_FILE} --documents {input.documents}"
        " --output-dir {TOKENIZER_DIR} --log {log}"


rule tokenize:
    input:
        documents=rules.corpus.output.documents,
        tokenizer=rules.tokenizer.output.tokenizer,
        meta=rules.tokenizer.output.meta,
    output:
        train=f"{DATA_DIR}/tokens_train.parquet",
        eval=f"{DATA_DIR}/tokens_eval.parquet",
        summary=f"{DATA_DIR}/tokens.json",
    params:
        settings=CFG.data.model_dump(),
        seed=CFG.seed,
    log:
        f"{DATA_DIR}/logs/tokenize.log",
    benchmark:
        f"{DATA_DIR}/logs/tokenize.benchmark.tsv"
    threads: workflow.cores
    shell:
        "bsn tokenize --config {CONFIG_FILE} --documents {input.documents}"
        " --tokenizer {TOKENIZER_DIR} --output-dir {DATA_DIR} --log {log}"


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
    shell:
        "bsn bigram-stats --config {CONFIG_FILE} --tokens {input.tokens}"
        " --output-dir {DATA_DIR} --log {log}"


rule data:
    input:
        rules.bigram_stats.output,
        rules.tokenize.output,
