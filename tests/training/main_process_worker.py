"""Run by `torchrun --nproc_per_node 2` from test_trainer_publishing.py: `run_on_main_process` returns the main process's
result there (None on the other), then raises its failure on both. Each process writes what it saw to `rank<N>.txt`."""

import sys
from pathlib import Path

from accelerate import Accelerator

from dino_hf.distributed import run_on_main_process


def main(output_dir: str) -> None:
    accelerator = Accelerator(cpu=True)
    seen = []
    repo_id = run_on_main_process(accelerator, lambda: "alice/run", "Creating the repository")
    seen.append(f"ok {repo_id!r}")

    def upload():
        raise RuntimeError("upload refused")

    try:
        run_on_main_process(accelerator, upload, "Uploading")
    except Exception as error:
        seen.append(f"raised {type(error).__name__}: {error}")
    (Path(output_dir) / f"rank{accelerator.process_index}.txt").write_text("|".join(seen))


if __name__ == "__main__":
    main(sys.argv[1])
