"""Data stages: the standard-library corpus, a BPE tokenizer trained on it, and the packed token files.

The tokenized folder (train.bin, eval.bin, meta.json; format in docs/architecture.md) is made once per
dataset and shared by every pretraining and fine-tuning run. For a hub study (`data.source: hub`) the
corpus and tokenizer rules are not used: `tokenize` streams the dataset with the models' tokenizer.
"""


rule corpus:
    input:
        script="workflow/scripts/build_corpus.py",
        code=code_of("build_corpus"),
    output:
        text=naming.CORPUS_TXT,
        meta=naming.CORPUS_META,
    params:
        max_mb=config["data"]["max_mb"],
        python=PYTHON_VERSION,  # the stdlib is the corpus: another Python version is another corpus
    log:
        log_of("corpus", "{dataset}"),
    benchmark:
        benchmark_of("corpus", "{dataset}")
    conda:
        "../../environment.yml"
    shell:
        "python {input.script} --out {output.text} --meta {output.meta} --max-mb {params.max_mb} > {log} 2>&1"


rule tokenizer:
    input:
        script="workflow/scripts/train_tokenizer.py",
        code=code_of("train_tokenizer"),
        corpus=naming.CORPUS_TXT,
    output:
        directory(naming.TOKENIZER_DIR),
    params:
        vocab_size=config["tokenizer"].get("vocab_size"),
    log:
        log_of("tokenizer", "{dataset}"),
    benchmark:
        benchmark_of("tokenizer", "{dataset}")
    conda:
        "../../environment.yml"
    shell:
        "python {input.script} --corpus {input.corpus} --vocab-size {params.vocab_size} --out-dir {output} > {log} 2>&1"


rule tokenize:
    input:
        script="workflow/scripts/tokenize_data.py",
        code=code_of("tokenize_data"),
        corpus=get_corpus_input,
        tokenizer=get_tokenizer_input,
    output:
        train=f"{naming.TOKENIZED_DIR}/train.bin",
        eval=f"{naming.TOKENIZED_DIR}/eval.bin",
        meta=f"{naming.TOKENIZED_DIR}/meta.json",
    params:
        tokenizer=get_tokenizer_arg,
        source=get_source_args,
        out_dir=output_dir,
    log:
        log_of("tokenize", "{dataset}"),
    benchmark:
        benchmark_of("tokenize", "{dataset}")
    threads: 4
    resources:
        mem_mb=16000,
    conda:
        "../../environment.yml"
    shell:
        "python {input.script} --tokenizer {params.tokenizer} --out-dir {params.out_dir} {params.source} > {log} 2>&1"
