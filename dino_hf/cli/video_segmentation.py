"""Video object segmentation by label propagation (DAVIS-2017 protocol): masks as indexed PNGs, J&F when annotated.

    dino-hf-video-segmentation --model_name_or_path dino-vits16 --data_path /data/DAVIS --output_dir davis_out
    dino-hf-video-segmentation --model_name_or_path outputs/demo/export --generate_demo_data demo/davis \
        --output_dir demo/davis_out --short_side 128

`--data_path` is a DAVIS root: `JPEGImages/480p/<video>/*.jpg`, `Annotations/480p/<video>/*.png` (at least the first
frame's) and `ImageSets/2017/val.txt` (or `--videos`). Writes `<output_dir>/<video>/<frame>.png` with the DAVIS
palette; prints J&F-mean, J-mean and F-mean over the videos annotated on every frame.
`--generate_demo_data DIR` writes a generated video of two moving shapes in that layout to DIR and uses it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dino_hf.cli._evaluation import add_model_and_output_arguments, check_data_source, load_model, write_figures
from dino_hf.evaluation import PropagationConfig, generate_video_demo, segment_davis


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = PropagationConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_and_output_arguments(parser, "a DAVIS root")
    parser.add_argument("--output_dir", type=Path, required=True, help="where to write the masks")
    parser.add_argument("--videos", nargs="+", default=None, help="video names (default: ImageSets/2017/val.txt)")
    parser.add_argument("--resolution", default="480p")
    parser.add_argument("--n_last_frames", type=int, default=defaults.n_last_frames, help="preceding frames used")
    parser.add_argument(
        "--size_mask_neighborhood", type=int, default=defaults.size_mask_neighborhood, help="in patches; 0: none"
    )
    parser.add_argument("--topk", type=int, default=defaults.topk, help="source patches each patch votes with")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="affinity exp(cos / T)")
    parser.add_argument(
        "--short_side", type=int, default=defaults.short_side, help="frames' shorter side (long side: multiple of 64)"
    )
    args = parser.parse_args(argv)
    check_data_source(parser, args)
    return args


def main(argv: list[str] | None = None) -> None:
    """The console script: runs [`run`] and returns None (setuptools' wrapper exits with `main()`'s value)."""
    run(argv)


def run(argv: list[str] | None = None) -> dict[str, float] | None:
    args = parse_args(argv)
    data_path = args.data_path or generate_video_demo(args.generate_demo_data)
    model, extraction = load_model(args)
    config = PropagationConfig(
        args.n_last_frames, args.size_mask_neighborhood, args.topk, args.temperature, args.short_side
    )
    figures = segment_davis(model, data_path, args.output_dir, args.videos, config, args.resolution, **extraction)
    print(f"masks written to {args.output_dir}")
    if figures is None:
        print("no video is annotated on every frame: nothing to score")
        return None
    print("  ".join(f"{name} {100 * value:.1f}" for name, value in figures.items()))
    write_figures(figures, args.output_file)
    return figures


if __name__ == "__main__":
    main()
