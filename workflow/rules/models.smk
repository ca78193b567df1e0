"""Base models pretrained here (the offline study): a small Llama per size preset, trained from scratch.

The output folder is a `save_pretrained` model with its tokenizer, so `finetune` loads it exactly like
a hub model. Hub models (the reference study) need no rule: each fine-tune reads them from the hub cache.
"""


rule pretrain:
    input:
        data=TOKENIZED,
        script="workflow/scripts/pretrain.py",
        code=TRAINING_CODE,
        tokenizer=get_tokenizer_input,
    output:
        directory(naming.BASE_MODEL_DIR),
    params:
        shape=get_pretrain_args,
        tokenizer=get_tokenizer_arg,
        data=tokenized_dir,
        batch_size=config["pretrain"]["batch_size"],
        per_device_batch_size=config["pretrain"]["per_device_batch_size"],
        block_size=config["pretrain"]["block_size"],
        weight_decay=config["pretrain"]["weight_decay"],
        warmup_steps=config["pretrain"]["warmup_steps"],
        grad_clip=config["pretrain"]["grad_clip"],
        seed=config["pretrain"]["seed"],
        ckpt_dir=naming.PRETRAIN_CKPT_DIR,
    log:
        log_of("pretrain", "{model}"),
    benchmark:
        benchmark_of("pretrain", "{model}")
    threads: TRAIN_THREADS
    resources:
        gpu=TRAIN_GPUS,
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} python -m optical_clm.gpu_slots --gpus {resources.gpu} -- "
        "python {input.script} {params.shape} --tokenizer {params.tokenizer} --data {params.data} "
        "--out-dir {output} --batch-size {params.batch_size} --per-device-batch-size {params.per_device_batch_size} "
        "--block-size {params.block_size} --weight-decay {params.weight_decay} --warmup-steps {params.warmup_steps} "
        "--grad-clip {params.grad_clip} --seed {params.seed} --ckpt-dir {params.ckpt_dir} "
        "--model-name {wildcards.model} > {log} 2>&1"
