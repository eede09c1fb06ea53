#!/usr/bin/env python
"""A linear segmentation head on frozen DINO features, scored by mIoU: `dino_hf.cli.semantic_segmentation` (`--help`).

python examples/semantic_segmentation.py --model_name_or_path outputs/demo/export --image_size 64 --compare_random_init
"""

from dino_hf.cli.semantic_segmentation import main


if __name__ == "__main__":
    main()
