#!/usr/bin/env python
"""Fine-tune a DINO backbone for image classification: a thin wrapper over `dino_hf.cli.finetune` (see `--help`)."""

from dino_hf.cli.finetune import main


if __name__ == "__main__":
    main()
