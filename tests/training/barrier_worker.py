"""Run by `torchrun --nproc_per_node 2` from test_multiprocess_exit.py: process 1 never reaches the end of the run
(it sleeps), process 0 ends the run with `finish_run` and a 3 s final barrier."""

import time

from accelerate import Accelerator

from dino_hf.distributed import finish_run


def main() -> None:
    accelerator = Accelerator(cpu=True)
    if accelerator.process_index == 1:
        time.sleep(60)
        return
    finish_run(accelerator, barrier_timeout_s=3)


if __name__ == "__main__":
    main()
