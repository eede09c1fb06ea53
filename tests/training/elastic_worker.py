"""Run by `torchrun --nproc_per_node 2` from test_elastic_resume.py: the tiny pretraining runs given as JSON, one
after the other, each `[output_dir, {training overrides}]` (one launch keeps the test fast)."""

import json
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))
from test_pretrain import tiny_run  # noqa: E402

from dino_hf.training import pretrain  # noqa: E402


def main(cache_dir: str, runs: str) -> None:
    from accelerate.state import AcceleratorState

    for output_dir, training in json.loads(runs):
        pretrain(*tiny_run(Path(output_dir), Path(cache_dir), training=training))
        # `end_training` destroyed the process group; the next run's Accelerator sets it up again.
        AcceleratorState._reset_state(reset_partial_state=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
