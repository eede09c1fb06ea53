"""Video object segmentation by label propagation (DAVIS-2017 protocol): masks as indexed PNGs, J&F when annotated.

A thin wrapper over `dino_hf.cli.video_segmentation` (also installed as the `dino-hf-video-segmentation` command);
`--help` lists the flags.
"""

from dino_hf.cli.video_segmentation import main


if __name__ == "__main__":
    main()
