"""Give each concurrent local training job its own GPUs, then run it.

Snakemake limits how many GPUs run at once (`--resources gpu=N`) but never says *which* ones: it
sets no `CUDA_VISIBLE_DEVICES`, so two local jobs would both land on GPU 0 (snakemake#281). This
wrapper claims `--gpus` free devices with one `flock` per device in a lock folder shared by every job
of this user on this machine, sets `CUDA_VISIBLE_DEVICES`, and `exec`s the command; the kernel drops
the locks when that process exits, however it exits. It does nothing (just runs the command) when no
GPU is visible, when `--gpus 0`, or when a scheduler already chose the devices (`CUDA_VISIBLE_DEVICES`
set, as SLURM does).

    python -m optical_clm.gpu_slots --gpus 2 -- accelerate launch --num_processes 2 train.py ...
    python -m optical_clm.gpu_slots --free-port      # prints a free TCP port (for --main_process_port)
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

DEFAULT_LOCK_DIR = os.path.join(tempfile.gettempdir(), f"optical-clm-gpu-slots-{os.getuid()}")


def count_gpus() -> int:
    """Number of NVIDIA GPUs on this machine (0 without `nvidia-smi`); cheaper than importing torch."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    result = subprocess.run([smi, "--list-gpus"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return 0
    return sum(1 for line in result.stdout.splitlines() if line.startswith("GPU "))


def try_acquire(n: int, n_devices: int, lock_dir: str) -> tuple[list[int], list[int]] | None:
    """Lock `n` of the devices 0..n_devices-1 without waiting: (device ids, lock fds), or None if busy."""
    os.makedirs(lock_dir, exist_ok=True)
    ids: list[int] = []
    fds: list[int] = []
    for device in range(n_devices):
        fd = os.open(os.path.join(lock_dir, f"gpu{device}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        ids.append(device)
        fds.append(fd)
        if len(ids) == n:
            return ids, fds
    for fd in fds:  # not enough free devices: give back what we took, so others are not starved
        os.close(fd)
    return None


def acquire(n: int, n_devices: int, lock_dir: str, poll_s: float = 2.0) -> tuple[list[int], list[int]]:
    """Block until `n` devices are free, then hold their locks (the fds stay open across `exec`)."""
    if n > n_devices:
        raise SystemExit(f"gpu_slots: --gpus {n} requested but this machine has {n_devices} GPU(s)")
    announced = False
    while (got := try_acquire(n, n_devices, lock_dir)) is None:
        if not announced:
            print(f"gpu_slots: waiting for {n} free GPU(s) of {n_devices} (locks in {lock_dir})", file=sys.stderr)
            announced = True
        time.sleep(poll_s)
    return got


def free_port() -> int:
    """A TCP port that is free right now (the OS picks it), for one job's torch.distributed rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=0, help="GPUs this command needs (0: run as is)")
    parser.add_argument("--lock-dir", default=os.environ.get("OPTICAL_CLM_GPU_LOCK_DIR", DEFAULT_LOCK_DIR))
    parser.add_argument("--free-port", action="store_true", help="print a free TCP port and exit")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    if args.free_port:
        print(free_port())
        return
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (write it after --)")
    if args.gpus < 0:
        parser.error(f"--gpus must be >= 0, got {args.gpus}")
    n_devices = 0 if args.gpus == 0 or "CUDA_VISIBLE_DEVICES" in os.environ else count_gpus()
    if n_devices > 0:
        ids, fds = acquire(args.gpus, n_devices, args.lock_dir)
        for fd in fds:
            os.set_inheritable(fd, True)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
        print(f"gpu_slots: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}", file=sys.stderr)
    sys.stdout.flush()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
