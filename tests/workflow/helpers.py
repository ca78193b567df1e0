"""Running Snakemake from the workflow tests: in the repository (dry-runs) or in a temporary copy of it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = "tests/workflow/config.tiny.yaml"
# What a study needs to run; results/, logs/ and .snakemake/ are left behind on purpose.
COPIED = ("Snakefile", "config.yaml", "environment.yml", "workflow", "profiles", "src", "configs", "studies", TINY)


def env_for(cwd: Path) -> dict[str, str]:
    """The tests' interpreter first on PATH (rules call `python`), and `cwd/src` ahead of the editable install."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(cwd / "src")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def snakemake(*args: str, cwd: Path = ROOT, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m snakemake ARGS` in `cwd`; stdout and stderr together in `.stdout`."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        env=env_for(cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc


def job_counts(output: str) -> Counter:
    """Per-rule job counts from the `Job stats` table Snakemake prints (without the `total` row)."""
    table = output.split("Job stats:", 1)[1]
    counts = Counter()
    for line in table.splitlines()[3:]:
        match = re.fullmatch(r"(\S+)\s+(\d+)", line.strip())
        if match is None:
            break
        if match[1] != "total":
            counts[match[1]] = int(match[2])
    return counts


def planned_jobs(*args: str, cwd: Path = ROOT) -> Counter:
    """Per-rule counts of the jobs a dry-run would run (empty when there is nothing to be done)."""
    out = snakemake("-n", "--quiet", "rules", *args, cwd=cwd).stdout
    return Counter() if "Nothing to be done" in out else job_counts(out)


def copy_repo(dest: Path) -> Path:
    """A fresh copy of what the workflow needs, without any results."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in COPIED:
        src = ROOT / name
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=ignore)
        else:
            shutil.copy2(src, target)
    return dest
