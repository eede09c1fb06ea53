# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""Throughput of the complete DINO training step: the code is `dino_hf.training.benchmark` (so that tests import it from the package); this is its command line.

python benchmarks/bench_train_step.py --help
"""

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dino_hf.training.benchmark import main  # noqa: E402


if __name__ == "__main__":
    main()
