# bigram-subnetworks: the entry point of the whole DAG (the rules are in workflow/rules/). Every
# rule comes from the stage registry (src/bigram_subnetworks/stages.py) and calls one `bsn` command.
#   snakemake                                   the embedded default (params.yaml), all cores
#   snakemake --configfile config/smoke.yaml    another config
#   snakemake --config 'masks={"lr": 0.02}'     overrides, merged into the config
# Snakemake reads profiles/default for every run from here (all cores, continue interrupted runs,
# content checksums); --profile profiles/slurm submits the jobs to a SLURM cluster.
from snakemake.utils import min_version

min_version("9.0")


# params.yaml unless --configfile names other files (Snakemake would merge them into it).
if not workflow.overwrite_configfiles:

    configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/stages.smk"
include: "workflow/rules/targets.smk"


rule all:
    default_target: True
    input:
        outputs_of("report"),


onsuccess:
    if REPORT_HTML.is_file():
        print(f"The report: {REPORT_HTML.resolve()}")
