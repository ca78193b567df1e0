"""Shared logic of the study workflow: config validation, the run table, wildcard constraints, paths, helpers.

Every path is built from the templates in `optical_clm.naming` (the analysis code uses the same ones),
and every learning rate is spelled by `naming.format_lr`, so a path can be rebuilt from config and
parsed back with `float()`. Rule bodies stay declarative and call the `get_*` helpers below.
"""

import glob
import os
import re
import sys
from pathlib import Path

from snakemake.logging import logger

from optical_clm import naming
from optical_clm.code_deps import local_imports
from optical_clm.gpu_slots import count_gpus
from optical_clm.study_config import StudyConfigError, check

# ---- 1. validate the config before any job is planned (types coerced, defaults filled) ----------
try:
    config.update(check(config, Path(workflow.current_basedir) / "../schemas/config.schema.yaml"))
except StudyConfigError as err:
    sys.exit(f"Error: {err}")  # one line naming the key; no traceback, no job runs

# ---- 2. derived tables ---------------------------------------------------------------------------
DATASET = config["data"]["name"]
MODELS = list(config["models"])
MODES = config["modes"]
PRETRAINED_HERE = [m for m in MODELS if "pretrain" in config["models"][m]]
TRAIN_TOKENIZER = "vocab_size" in config["tokenizer"]
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
# Training jobs on a machine with GPUs: one GPU and up to 8 threads each (the `gpu` limit in the profile says
# how many run at once). On a CPU-only machine: no GPU and one thread each, so the cores run independent jobs
# side by side (faster than threads for these small models). profiles/slurm sets both explicitly.
TRAIN_GPUS = 1 if count_gpus() else 0
TRAIN_THREADS = 8 if TRAIN_GPUS else 1
RUNS = [  # (model, mode, lr as spelled in paths): one fine-tune each
    (model, mode, naming.format_lr(lr)) for model in MODELS for mode in MODES for lr in config["models"][model]["lrs"]
]

if config["data"]["source"] == "stdlib" and config["data"]["python_version"] not in (None, PYTHON_VERSION):
    logger.warning(
        f"data.python_version is {config['data']['python_version']} but this is Python {PYTHON_VERSION}: "
        "the standard-library corpus, and so every result, will differ from the recorded study"
    )

# ---- 3. wildcard constraints ---------------------------------------------------------------------


wildcard_constraints:
    model="|".join(re.escape(m) for m in MODELS),
    mode=naming.MODE_RE,
    lr=naming.LR_RE,
    dataset=re.escape(DATASET),


# ---- 4. code each stage depends on, as inputs: files <= 1 MB are compared by checksum, so a `git checkout`
# that leaves them unchanged reruns nothing and a real edit reruns the stage (and only the stages using it).
def code_of(script):
    """The project modules `workflow/scripts/<script>.py` imports, transitively (optical_clm.code_deps)."""
    path = f"workflow/scripts/{script}.py"
    return local_imports(path) if os.path.isfile(path) else []  # a missing script fails as a missing input


# Training also depends on all of otlib and the study package by content, imported or not (registries).
TRAINING_CODE = sorted(set(glob.glob("src/otlib/**/*.py", recursive=True) + glob.glob("src/optical_clm/*.py")))
TOKENIZED_DIR = naming.TOKENIZED_DIR.format(dataset=DATASET)
TOKENIZED = [f"{TOKENIZED_DIR}/{name}" for name in ("train.bin", "eval.bin", "meta.json")]


# ---- 5. helpers used by the rules ------------------------------------------------------------------
def get_tokenizer_input(wildcards):
    """The tokenizer folder trained here, or nothing for a hub tokenizer."""
    return naming.TOKENIZER_DIR.format(dataset=DATASET) if TRAIN_TOKENIZER else []


def get_tokenizer_arg(wildcards):
    return naming.TOKENIZER_DIR.format(dataset=DATASET) if TRAIN_TOKENIZER else config["tokenizer"]["hub"]


def get_corpus_input(wildcards):
    return naming.CORPUS_TXT.format(dataset=DATASET) if config["data"]["source"] == "stdlib" else []


def get_source_args(wildcards):
    """`tokenize_data.py` flags naming where the text comes from (and how much of it to keep)."""
    data = config["data"]
    if data["source"] == "stdlib":
        args = f"--text-file {naming.CORPUS_TXT.format(dataset=DATASET)}"
    else:
        args = f"--hf-dataset {data['hf_dataset']} --hf-split {data['hf_split']} --text-column {data['text_column']}"
        args += f" --hf-config {data['hf_config']}" if data["hf_config"] else ""
    args += f" --max-tokens {data['max_tokens']}" if data["max_tokens"] else ""
    return args + f" --eval-tokens {data['eval_tokens']} --seed {data['seed']}"


def get_pretrain_args(wildcards):
    """`pretrain.py` shape and budget flags of one model (the preset, then any explicit overrides)."""
    spec = config["models"][wildcards.model]["pretrain"]
    flags = [f"--preset {spec['preset']} --tokens {spec['tokens']} --lr {spec['lr']}"]
    for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
        if key in spec:
            flags.append(f"--{key.replace('_', '-')} {spec[key]}")
    if config["pretrain"]["checkpoint_every"] is not None:
        flags.append(f"--checkpoint-every {config['pretrain']['checkpoint_every']}")
    return " ".join(flags)


def get_base_model_input(wildcards):
    """The base-model folder pretrained here, or nothing for a hub model (downloaded by the run itself)."""
    return naming.BASE_MODEL_DIR.format(model=wildcards.model) if wildcards.model in PRETRAINED_HERE else []


def get_base_model_arg(wildcards):
    spec = config["models"][wildcards.model]
    return spec["hub"] if "hub" in spec else naming.BASE_MODEL_DIR.format(model=wildcards.model)


def get_otlib_input(wildcards):
    return config["otlib_config"] if wildcards.mode != "digital" else []


def get_finetune_args(wildcards):
    """Optional `finetune.py` flags: the otlib TOML, the token budget, and settings left to the script when null."""
    ft = config["finetune"]
    flags = [f"--otlib-config {config['otlib_config']}"] if wildcards.mode != "digital" else []
    flags.append(f"--tokens {ft['tokens']}" if ft["tokens"] else f"--token-ratio {ft['token_ratio']}")
    for key in ("diverge_factor", "eval_every", "eval_tokens", "checkpoint_every"):
        if ft[key] is not None:
            flags.append(f"--{key.replace('_', '-')} {ft[key]}")
    if ft["save_model"]:
        flags.append("--save-model")
    if not ft["cuda_graphs"]:
        flags.append("--no-cuda-graphs")
    return " ".join(flags)


def tokenized_dir(wildcards, input):
    """The folder of the tokenized data (train.bin, eval.bin, meta.json), from the rule's `data` input."""
    return os.path.dirname(input.data[0])


def output_dir(wildcards, output):
    """The folder of the rule's first output (scripts take a folder and write fixed names into it)."""
    return os.path.dirname(output[0])


def get_lr(wildcards):
    return naming.parse_lr(wildcards.lr)


def get_launcher(wildcards, resources):
    """`python` for one device (or the CPU); `accelerate launch` on a free port for several GPUs."""
    if int(resources.gpu) <= 1:
        return "python"
    port = "$(python -m optical_clm.gpu_slots --free-port)"
    return f"accelerate launch --num_processes {resources.gpu} --num_machines 1 --main_process_port {port}"


def get_smoothing_args(wildcards):
    """Only the setting of the chosen method, so editing another method's setting reruns nothing."""
    sm = config["smoothing"]
    option = {"ema": "weight", "gaussian": "sigma", "rolling": "window"}[sm["method"]]
    return f"--method {sm['method']} --{option} {sm[option]}"


def get_external_input(wildcards):
    """The external-runs manifest and the loss logs it lists (their content feeds the table and figures)."""
    manifest = config["external"]
    if not manifest:
        return []
    from optical_clm.analysis.files import AnalysisError  # pandas: imported only when a manifest is set
    from optical_clm.analysis.runs import read_manifest

    try:
        entries = read_manifest(manifest)
    except AnalysisError:
        return [manifest]  # missing or malformed: reported as a missing input, or by summarize.py
    folder = os.path.dirname(manifest)
    return [manifest] + sorted({os.path.normpath(os.path.join(folder, str(e["file"]))) for e in entries})


def get_external_arg(wildcards):
    return f"--external {config['external']}" if config["external"] else ""


def run_files(template):
    """`template` filled for every run of the study."""
    return [template.format(model=m, mode=mode, lr=lr) for m, mode, lr in RUNS]


def get_run_dirs(wildcards):
    return run_files(naming.RUN_DIR)


def log_of(rule, key):
    """`logs/<rule>/<key>.log`, `key` keeping its wildcards (e.g. naming.RUN_KEY)."""
    return naming.LOG.format(rule=rule, key=key)


def benchmark_of(rule, key):
    return naming.BENCHMARK.format(rule=rule, key=key)


def get_figure_outputs():
    """Every figure file; the PNGs go into the report, each with the caption of its kind of figure."""
    outputs = []
    for path in naming.figure_paths(MODELS):
        stem = Path(path).stem
        kind = "loss_curves" if stem.startswith("loss_curves_") else stem  # workflow/report/<kind>.rst
        caption = f"../report/{kind}.rst"  # relative to this file's directory, like conda: below
        outputs.append(report(path, caption=caption, category="Figures") if path.endswith(".png") else path)
    return outputs


def get_final_output():
    """The targets of the default `all`: every run's log, metrics and smoothed log, the table and the figures."""
    runs = run_files(naming.TRAIN_LOG) + run_files(naming.METRICS) + run_files(naming.SMOOTHED_LOG)
    return runs + [naming.SUMMARY_CSV, naming.SUMMARY_MD] + naming.figure_paths(MODELS)
