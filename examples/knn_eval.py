#!/usr/bin/env python
"""Weighted k-NN evaluation of frozen DINO features: the same program as `dino-hf-knn-eval` and
`python -m dino_hf.cli.knn_eval` (see dino_hf/cli/knn_eval.py).

    python examples/knn_eval.py --model_name_or_path outputs/demo/export --dataset_name embedded
"""

from dino_hf.cli.knn_eval import main


if __name__ == "__main__":
    main()
