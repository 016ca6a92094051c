# The run's config: Snakemake's `config` (params.yaml or --configfile, --config overrides merged
# in, or the config a parent workflow passes to this one as a module) is validated before any
# rule is defined, and written once as the run's effective config, which every job reads.
import os
import sys
from dataclasses import replace
from pathlib import Path

from snakemake.exceptions import WorkflowError

from bigram_subnetworks import validation
from bigram_subnetworks.artifacts import REPORT_HTML as _REPORT
from bigram_subnetworks.config import (
    ConfigError,
    merge_overrides,
    typed_overrides,
    validate_config,
    write_effective_config,
)
from bigram_subnetworks.devices import torch_threads, visible_gpus
from bigram_subnetworks.frontends import rule_specs
from bigram_subnetworks.runlock import guard_run
from bigram_subnetworks.stages import run_config_path


def _source():
    """What the config came from, for error messages."""
    files = workflow.overwrite_configfiles or workflow.configfiles
    name = ", ".join(os.path.relpath(f) for f in files) or "the module's config"
    return name + (
        " with --config overrides" if workflow.config_settings.config else ""
    )


try:
    RAW = merge_overrides(
        dict(config), typed_overrides(workflow.config_settings.config or {})
    )
    CFG = validate_config(RAW, source=_source())
    validation.check(CFG, _source())
except ConfigError as error:
    sys.exit(str(error))

# A Path: Snakemake does not track its value, so a job depends on the config keys it reads
# (params.settings), not on where the effective config lies.
RUN_CONFIG = Path(run_config_path(CFG))
write_effective_config(CFG, RUN_CONFIG)


def _guarded(function):
    """`function`, first making sure this run may lock the working directory (a live run stops
    it; the locks of a killed one are released: bigram_subnetworks.runlock). Snakemake calls
    input and params functions while it builds the DAG: it knows by then whether this is a dry
    run, and checks its own locks right after."""

    def guarded(wildcards):
        guard_run(workflow)
        return function(wildcards)

    return guarded


SPECS = [
    replace(
        spec,
        input={name: _guarded(files) for name, files in spec.input.items()},
        settings=_guarded(spec.settings),
    )
    for spec in rule_specs(CFG)
]
REPORT_HTML = Path(_REPORT.render(run=CFG.run))

# One environment for the whole workflow (used with --software-deployment-method conda).
ENVIRONMENT = "../../environment.yml"


def _all_cores():
    """The --cores given (torch and tokenizer stages use them all); 1 for commands such as
    --unlock that give none."""
    try:
        cores = workflow.cores
    except WorkflowError:
        return 1
    # Cluster executors report an unbounded core count; profiles set their threads per rule.
    return min(cores, os.cpu_count() or 1)


ALL_CORES = _all_cores()
# On a CPU machine torch stages take every core (two torch jobs sharing the cores each run ~4x
# slower). With N GPUs each torch job takes one GPU (`resources: gpu=1`; at most N at once, the
# default limit here) and an equal share of the cores; `bsn` picks a GPU no other job uses.
GPUS = 0 if CFG.device == "cpu" else visible_gpus()
TORCH_THREADS = CFG.threads or torch_threads(ALL_CORES, GPUS)
if GPUS and "gpu" not in workflow.global_resources:
    workflow.register_resource("gpu", GPUS)


TARGETS = {spec.name: spec.targets for spec in SPECS}


def outputs_of(*stages):
    """Every output file of the given stages' jobs (stages a config does not have add none)."""
    return [path for stage in stages for path in TARGETS.get(stage, [])]


def outputs_with_captions(spec):
    """Output files, with report figures wrapped for `snakemake --report`."""
    wrapped = {}
    for name, files in spec.output.items():

        def wrap(path):
            if path not in spec.captions:
                return path
            return report(
                path, caption=spec.captions[path], category="Bigram subnetworks"
            )

        wrapped[name] = (
            [wrap(f) for f in files] if isinstance(files, list) else wrap(files)
        )
    return wrapped
