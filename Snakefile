"""optical-clm: does simulated optical hardware still let a pretrained causal LM fine-tune, and how does
that scale with model size?

    snakemake --cores all                                      # the offline default study (config.yaml)
    snakemake --workflow-profile profiles/slurm --configfile studies/aicrosssim-clm.yaml   # the reference study
    snakemake --cores 1 figures                                # re-draw figures and table from the run logs

Stages (one file each under workflow/rules/): data (corpus -> tokenizer -> tokenize), models (pretrain),
finetune (one run per model x mode x lr), analysis (smooth -> summarize, plot). See docs/workflow.md.
"""

from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the default study; a study file given with --configfile replaces it (deep-merging would
# add the default's models to the study's). To overlay a change: --configfile config.yaml my_change.yaml
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"



report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/analysis.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
