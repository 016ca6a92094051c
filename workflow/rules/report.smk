# The report: figures (also in Snakemake's own `--report`), index.html, summary.md, DVC metrics.
from bigram_subnetworks.report.figures import figure_names

REPORT_DIR = f"{RUN_DIR}/report"


rule report:
    input:
        analysis=rules.analysis.input,
        models=expand(rules.pretrain.output, model=MODELS),
        logs=[mask_path(*job).replace(".safetensors", ".json") for job in MASK_JOBS],
        bigram_meta=rules.bigram_stats.output.meta,
        tokens_meta=rules.tokenize.output.summary,
    output:
        figures=[
            report(
                f"{REPORT_DIR}/figures/{name}.png",
                caption=f"../report/{name}.rst",
                category="Bigram subnetworks",
            )
            for name in figure_names(CFG)
        ],
        html=f"{REPORT_DIR}/index.html",
        summary=f"{REPORT_DIR}/summary.md",
        plots=[
            f"{REPORT_DIR}/plots/{name}.csv"
            for name in (["sparsity", "checkpoints"] if CHECKPOINTS else ["sparsity"])
        ],
        metrics=f"{RUN_DIR}/metrics.json",
    log:
        f"{RUN_DIR}/logs/report.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/report.tsv"
    conda:
        ENVIRONMENT
    params:
        config=CONFIG_FILE,
        run=folder_of("metrics", of="output"),
        data=folder_of("bigram_meta"),
        out=folder_of("html", of="output"),
    shell:
        "bsn report --config {params.config} --run-dir {params.run} --data-dir {params.data}"
        " --output-dir {params.out} --metrics-json {output.metrics} --log {log}"
