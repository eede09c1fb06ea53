"""Run by `torchrun --nproc_per_node 2` from test_distributed.py: a few pretraining steps on the CPU (gloo), then each
process writes its teacher, center and the record ids it trained on, so the test can compare the processes, and
whether the run's end left a DDP-wrapped model or the process group behind."""

import gc
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


sys.path.insert(0, str(Path(__file__).parent))
from test_pretrain import tiny_run  # noqa: E402

from dino_hf.training import pretrain  # noqa: E402


def main(output_dir: str, cache_dir: str) -> None:
    seen: list[str] = []

    def collect(step, batch, output, model):
        seen.extend(batch.ids)

    model_args, data_args, training_args = tiny_run(
        Path(output_dir) / "run", Path(cache_dir), training={"max_steps": 4, "checkpointing_steps": 2}
    )
    result = pretrain(model_args, data_args, training_args, step_callback=collect)
    rank = int(os.environ["RANK"])
    state = {f"teacher.{k}": v.contiguous() for k, v in result.model.teacher.state_dict().items()}
    state["center"] = result.model.center.center.contiguous()
    save_file(state, str(Path(output_dir) / f"rank{rank}.safetensors"))
    # The run's end (`finish_run`) released the DDP-wrapped model and destroyed the process group before returning.
    ddp_alive = sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
    ended = {"ddp_alive": ddp_alive, "process_group": torch.distributed.is_initialized()}
    (Path(output_dir) / f"rank{rank}.json").write_text(json.dumps({"ids": seen, "steps": result.global_step, **ended}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
