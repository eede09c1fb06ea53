"""Run by `torchrun --nproc_per_node 2` from test_elastic_resume.py: the tiny pretraining runs given as JSON, one
after the other, each `[output_dir, {training overrides}]` (one launch keeps the test fast)."""

import json
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))
from test_pretrain import tiny_run  # noqa: E402

from dino_hf.training import pretrain  # noqa: E402


def main(cache_dir: str, runs: str) -> None:
    from accelerate.state import PartialState

    runs = json.loads(runs)
    # `end_training` destroys the process group; keep it for the next run (re-creating it is flaky with gloo).
    destroy, PartialState.destroy_process_group = PartialState.destroy_process_group, lambda self, group=None: None
    for output_dir, training in runs:
        pretrain(*tiny_run(Path(output_dir), Path(cache_dir), training=training))
    destroy(PartialState())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
