"""Copy detection (Copydays protocol) on a folder of originals and folders of transformed copies: mAP per block.

A thin wrapper over `dino_hf.cli.copy_detection` (also installed as the `dino-hf-copy-detection` command);
`--help` lists the flags.
"""

from dino_hf.cli.copy_detection import main


if __name__ == "__main__":
    main()
