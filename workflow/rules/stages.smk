# One rule per stage of the registry, in DAG order. Each job runs
#   bsn <stage> --config results/<run>/config.yaml <wildcards, inputs, outputs> --log <log>
# and is rerun when an input changes or a config key the stage reads changes (params.settings).


def _outputs(spec):
    """Output files, with report figures wrapped for `snakemake --report`."""
    wrapped = {}
    for name, files in spec.output.items():
        def wrap(path):
            if path not in spec.captions:
                return path
            return report(path, caption=spec.captions[path], category="Bigram subnetworks")

        wrapped[name] = [wrap(f) for f in files] if isinstance(files, list) else wrap(files)
    return wrapped


for spec in SPECS:

    rule:
        name:
            spec.name
        input:
            **spec.input,
        output:
            **_outputs(spec),
        log:
            spec.log,
        benchmark:
            spec.benchmark
        wildcard_constraints:
            **spec.wildcard_constraints,
        threads: ALL_CORES if spec.threads else 1
        resources:
            gpu=GPUS if spec.torch else 0,
        conda:
            ENVIRONMENT
        params:
            command=spec.command,
            settings=spec.settings,
            args=spec.args,
            config=RUN_CONFIG,
        shell:
            "bsn {params.command} --config {params.config} {params.args}"
