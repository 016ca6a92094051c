# bigram-subnetworks: the whole DAG. Every rule comes from the stage registry
# (src/bigram_subnetworks/stages.py) and calls one `bsn` command.
#   snakemake --cores all                                   the embedded default (params.yaml)
#   snakemake --cores all --configfile config/smoke.yaml    another config
#   snakemake --cores all --config 'masks={"lr": 0.02}'     overrides, merged into the config
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
