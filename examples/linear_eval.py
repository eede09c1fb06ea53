#!/usr/bin/env python
"""Linear evaluation of frozen DINO features with a grid of learning rates: `dino_hf.cli.linear_eval` (`--help`).

python examples/linear_eval.py --model_name_or_path outputs/demo/export --dataset_name embedded --epochs 10
"""

from dino_hf.cli.linear_eval import main


if __name__ == "__main__":
    main()
