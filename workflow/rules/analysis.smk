"""Analysis stages: smooth each run's loss curve, then the summary table and the figures.

They read only the run logs (and optional external logs), so re-drawing after a smoothing or plotting
change runs no training: `snakemake --cores 1 figures`. Figures and the table go into the report.
"""


localrules:
    all,
    figures,
    smooth,
    summarize,
    plot,


rule smooth:
    input:
        log=naming.TRAIN_LOG,
        script="workflow/scripts/smooth.py",
        code=code_of("smooth"),
    output:
        naming.SMOOTHED_LOG,
    params:
        smoothing=get_smoothing_args,
    log:
        log_of("smooth", naming.RUN_KEY),
    benchmark:
        benchmark_of("smooth", naming.RUN_KEY)
    conda:
        "../../environment.yml"
    shell:
        "python {input.script} --log {input.log} --out {output} {params.smoothing} > {log} 2>&1"


rule summarize:
    input:
        logs=run_files(naming.TRAIN_LOG),
        metrics=run_files(naming.METRICS),
        smoothed=run_files(naming.SMOOTHED_LOG),
        external=get_external_input,
        script="workflow/scripts/summarize.py",
        code=code_of("summarize"),
    output:
        csv=report(naming.SUMMARY_CSV, caption="../report/summary.rst", category="Results table"),
        md=naming.SUMMARY_MD,
    params:
        runs=get_run_dirs,
        external=get_external_arg,
        smoothing=get_smoothing_args,  # for external logs, which have no smoothed file
    log:
        log_of("summarize", "summarize"),
    benchmark:
        benchmark_of("summarize", "summarize")
    conda:
        "../../environment.yml"
    shell:
        "python {input.script} --runs {params.runs} {params.external} {params.smoothing} "
        "--out-csv {output.csv} --out-md {output.md} > {log} 2>&1"


rule plot:
    input:
        summary=naming.SUMMARY_CSV,
        logs=run_files(naming.TRAIN_LOG),
        metrics=run_files(naming.METRICS),
        smoothed=run_files(naming.SMOOTHED_LOG),
        external=get_external_input,
        script="workflow/scripts/plot.py",
        code=code_of("plot"),
    output:
        get_figure_outputs(),
    params:
        runs=get_run_dirs,
        external=get_external_arg,
        smoothing=get_smoothing_args,
        x=config["plot"]["x"],
        out_dir=output_dir,
    log:
        log_of("plot", "plot"),
    benchmark:
        benchmark_of("plot", "plot")
    conda:
        "../../environment.yml"
    shell:
        "python {input.script} --summary {input.summary} --runs {params.runs} {params.external} "
        "{params.smoothing} --x {params.x} --out-dir {params.out_dir} > {log} 2>&1"


rule figures:
    """Re-draw the figures and the table from the run logs only (no training)."""
    input:
        naming.figure_paths(MODELS),
        naming.SUMMARY_CSV,
        naming.SUMMARY_MD,
