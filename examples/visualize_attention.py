"""Save the last block's self-attention maps of a DINO backbone: a PNG grid of one image (the paper's Figure 1), or
every frame of a video as images and an animation (the reference's `video_generation.py`).

A thin wrapper over `dino_hf.cli.visualize_attention` (also installed as the `dino-hf-visualize-attention` command);
`--help` lists the flags.
"""

from dino_hf.cli.visualize_attention import main


if __name__ == "__main__":
    main()
