"""Run by `torchrun --nproc_per_node 2` from test_multiprocess_exit.py: a tiny pretraining in which process 1 raises
after its second optimizer step, through `pretrain`'s public `step_callback` (the way a caller stops a run), while
process 0 trains on into its next collective. `main` is wrapped in torchrun's `record`, as `dino-hf-pretrain` is."""

import os
import sys
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record


sys.path.insert(0, str(Path(__file__).parent))
from test_pretrain import tiny_run  # noqa: E402

from dino_hf.training import pretrain  # noqa: E402


class DiskFullError(RuntimeError):
    pass


@record
def main(output_dir: str, cache_dir: str) -> None:
    def fail_on_process_1(step, batch, output, model):
        if step == 2 and int(os.environ["RANK"]) == 1:
            raise DiskFullError("process 1 could not write its batch log at step 2")

    pretrain(*tiny_run(Path(output_dir), Path(cache_dir), training={"max_steps": 8}), step_callback=fail_on_process_1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
