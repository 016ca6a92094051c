# bigram-subnetworks: the whole DAG. Rules are thin: each calls one `bsn` subcommand.
#   snakemake --cores all                               the embedded default (params.yaml)
#   snakemake --cores all --configfile config/smoke.yaml   another complete config
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/masks.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.report.output,
