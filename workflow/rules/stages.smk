# One rule per stage of the registry, in DAG order. Each job runs
#   bsn <stage> --config results/<run>/config.yaml <wildcards, inputs, outputs> --log <log>
# and is rerun when an input changes or a config key the stage reads changes (params.settings).
# Stages that need the network (Hub downloads) are local rules: on a cluster they run where
# Snakemake runs, and every compute job reads the Hub cache offline.


for spec in SPECS:

    rule:
        name:
            spec.name
        input:
            **spec.input,
        output:
            **outputs_with_captions(spec),
        log:
            spec.log,
        benchmark:
            spec.benchmark
        wildcard_constraints:
            **spec.wildcard_constraints,
        priority: spec.priority
        localrule: spec.network
        conda:
            ENVIRONMENT
        threads: TORCH_THREADS if spec.torch else ALL_CORES if spec.threads else 1
        resources:
            gpu=1 if spec.torch and GPUS else 0,
        params:
            command=spec.command,
            settings=spec.settings,
            args=spec.args,
            config=RUN_CONFIG,
        shell:
            "bsn {params.command} --config {params.config} {params.args}"
