"""Run by `torchrun --nproc_per_node 2` from test_distributed.py: each process normalises its half of the same teacher
scores with `log_sinkhorn_knopp` (gloo all-reduces) and writes the result, so the test can compare the two halves with
one process normalising the whole batch."""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from dino_hf.modeling_dino import log_sinkhorn_knopp


def main(output_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    scores = torch.randn(10, 6, generator=torch.Generator().manual_seed(0)) / 0.07
    mine = scores[:4] if rank == 0 else scores[4:]  # unequal halves: N is all-reduced, not assumed
    save_file({"log_targets": log_sinkhorn_knopp(mine, 3)}, str(Path(output_dir) / f"sinkhorn{rank}.safetensors"))
    dist.destroy_process_group()


if __name__ == "__main__":
    assert os.environ.get("WORLD_SIZE") == "2"
    main(sys.argv[1])
