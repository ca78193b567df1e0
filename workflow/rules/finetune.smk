"""One fine-tuning run per (model, mode, lr): the unit of the study.

A `shell:` rule so that several GPUs can run it under `accelerate launch` (`script:` cannot be wrapped
in a launcher). `gpu_slots` gives each concurrent local job its own GPUs (a no-op on a CPU or under
SLURM). Checkpoints go to a params path, not an output: Snakemake deletes outputs before a job starts,
and the checkpoint is what an interrupted run (`--rerun-incomplete`) resumes from. The training code
deletes it when the run finishes and ignores one written under other settings, so a later rerun
(changed code or settings) starts from the base model again.
"""


rule finetune:
    input:
        data=TOKENIZED,
        script="workflow/scripts/finetune.py",
        code=TRAINING_CODE,
        model=get_base_model_input,
        otlib_config=get_otlib_input,
    output:
        log=naming.TRAIN_LOG,
        metrics=naming.METRICS,
    params:
        model=get_base_model_arg,
        data=tokenized_dir,
        lr=get_lr,
        out_dir=output_dir,
        ckpt_dir=naming.CKPT_DIR,
        options=get_finetune_args,
        batch_size=config["finetune"]["batch_size"],
        per_device_batch_size=config["finetune"]["per_device_batch_size"],
        block_size=config["finetune"]["block_size"],
        weight_decay=config["finetune"]["weight_decay"],
        warmup_steps=config["finetune"]["warmup_steps"],
        grad_clip=config["finetune"]["grad_clip"],
        seed=config["finetune"]["seed"],
        tracker=config["finetune"]["tracker"],
        launcher=get_launcher,
    log:
        log_of("finetune", naming.RUN_KEY),
    benchmark:
        benchmark_of("finetune", naming.RUN_KEY)
    threads: TRAIN_THREADS
    resources:
        gpu=TRAIN_GPUS,
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} python -m optical_clm.gpu_slots --gpus {resources.gpu} -- "
        "{params.launcher} {input.script} --model {params.model} --mode {wildcards.mode} --data {params.data} "
        "--model-name {wildcards.model} --lr {params.lr} --out-dir {params.out_dir} --ckpt-dir {params.ckpt_dir} "
        "{params.options} --weight-decay {params.weight_decay} "
        "--batch-size {params.batch_size} --per-device-batch-size {params.per_device_batch_size} "
        "--block-size {params.block_size} --warmup-steps {params.warmup_steps} --grad-clip {params.grad_clip} "
        "--seed {params.seed} --tracker {params.tracker} > {log} 2>&1"
