"""Launching a test script in two CPU processes (gloo) with torchrun, in its own session: on a timeout the launcher and
both workers are killed together and the test fails with the output's tail (`dino_hf.testing_utils.run_process_tree`).
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

from dino_hf.testing_utils import run_process_tree


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_process_environment() -> dict[str, str]:
    return {
        **os.environ,
        # `accelerate launch --cpu --num_processes 2` would start one process; torchrun starts two.
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]),
    }


def torchrun_command(*script_and_args: str) -> list[str]:
    """`torchrun --nproc_per_node 2 ...` on a free local port; `-m module` or a script path, then its arguments."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        *script_and_args,
    ]


def launch_two_processes(*script_and_args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 ...` on the CPU, whatever its exit status; `timeout`: see `run_process_tree`."""
    return run_process_tree(torchrun_command(*script_and_args), timeout=timeout, env=two_process_environment())


def run_two_processes(script: Path, *args: str, timeout: float = 120) -> None:
    """`torchrun --nproc_per_node 2 script *args` on the CPU; fails the test with the output's tail on an error."""
    result = launch_two_processes(str(script), *args, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
