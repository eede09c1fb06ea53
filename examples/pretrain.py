#!/usr/bin/env python
"""Pretrain DINO: the same program as `dino-hf-pretrain` and `python -m dino_hf.cli.pretrain` (see dino_hf/cli/pretrain.py).

accelerate launch examples/pretrain.py --dataset_name ILSVRC/imagenet-1k --output_dir outputs/dino-vits16
python examples/pretrain.py     # no arguments: the offline demo
"""

from dino_hf.cli.pretrain import main


if __name__ == "__main__":
    main()
