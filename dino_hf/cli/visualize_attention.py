"""Save the last block's self-attention maps of a DINO backbone: a PNG grid of one image (the paper's Figure 1), or
every frame of a video as images and an animation (the reference's `video_generation.py`).

    dino-hf-visualize-attention --model_name_or_path dino-vits16 --image_path photo.jpg \
        --image_size 480 480 --output_dir attention --threshold 0.6
    dino-hf-visualize-attention --model_name_or_path dino-vits8 --video_path frames/ --output_dir attention_video
    dino-hf-visualize-attention --model_name_or_path dino-vits8 --video_path clip.mp4 --video_format mp4

Without `--image_path` or `--video_path` a synthetic demo image (two shapes on a gradient) is used, so the command runs
offline. The model folder may hold a `DinoViTModel` or a `DinoForSelfDistillation` training run (its teacher backbone
is used). Image mode writes `<output_dir>/attention_grid.png`: the image and every head's map, and below them the masks
keeping `--threshold` of each head's attention mass (no masks with `--threshold 0`). Video mode (`--video_path`: a
folder of frames, or a video file with `pip install imageio av`) writes `<output_dir>/attention/attn-<frame>.png`, the
heads' mean map of each frame, and `<output_dir>/attention.gif` (or `.mp4`, which needs imageio and av).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from dino_hf.evaluation import (
    attention_maps,
    attention_video,
    load_backbone,
    prepare_image,
    processor_normalisation,
    read_frames,
    require_attention,
    save_attention_grid,
    threshold_attention,
)


def demo_image(width: int = 480, height: int = 480) -> Image.Image:
    """A gradient background with a red disk and a blue square: something for the heads to attend to."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((0.15 * width, 0.2 * height, 0.55 * width, 0.6 * height), fill=(220, 40, 40))
    draw.rectangle((0.6 * width, 0.55 * height, 0.9 * width, 0.85 * height), fill=(40, 70, 200))
    return image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", required=True, help="a saved dino_hf folder (or Hub repo)")
    parser.add_argument("--image_path", default=None, help="image to visualise; default: a synthetic demo image")
    parser.add_argument("--video_path", type=Path, default=None, help="video mode: a folder of frames or a video file")
    parser.add_argument(
        "--image_size",
        type=int,
        nargs="+",
        default=None,
        help="H W to resize to, or one number for the shorter side (default: 480 480 for an image, as the reference; "
        "frames keep their size)",
    )
    parser.add_argument("--output_dir", type=Path, default=Path("attention"))
    parser.add_argument("--threshold", type=float, default=0.6, help="attention mass the masks keep; 0: no masks")
    parser.add_argument("--fps", type=float, default=None, help="animation frame rate (default: the video's, or 10)")
    parser.add_argument("--video_format", choices=("gif", "mp4"), default="gif", help="mp4 needs imageio and av")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.image_size is not None and len(args.image_size) not in (1, 2):
        parser.error("--image_size takes one or two numbers")
    if args.image_path and args.video_path:
        parser.error("give --image_path or --video_path, not both")
    return args


def _size(image_size: list[int] | None):
    return None if image_size is None else image_size[0] if len(image_size) == 1 else tuple(image_size)


def main(argv: list[str] | None = None) -> None:
    """The console script: runs [`run`] and returns None (setuptools' wrapper exits with `main()`'s value)."""
    run(argv)


def run(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    model = load_backbone(args.model_name_or_path).to(args.device)
    try:
        require_attention(model, f"Attention maps of {args.model_name_or_path}")
    except ValueError as error:
        raise SystemExit(f"dino-hf-visualize-attention: {error}") from None
    mean, std = processor_normalisation(args.model_name_or_path)
    if args.video_path is not None:
        frames, names, fps = read_frames(args.video_path)
        paths, animation = attention_video(
            model, frames, names, args.output_dir, _size(args.image_size), args.fps or fps or 10.0,
            args.video_format, mean, std,
        )  # fmt: skip
        print(f"{len(paths)} frames' attention in {paths[0].parent}; wrote {animation}")
        return animation
    image = Image.open(args.image_path) if args.image_path else demo_image()
    image, pixel_values = prepare_image(
        image, _size(args.image_size or [480, 480]), model.config.patch_size, mean, std
    )
    maps = attention_maps(model, pixel_values.to(args.device))[0].float().cpu()
    masks = threshold_attention(maps, args.threshold) if args.threshold > 0 else None
    path = args.output_dir / "attention_grid.png"
    grid = save_attention_grid(image, maps, masks, path)
    print(
        f"{maps.shape[0]} heads on a {maps.shape[1]}x{maps.shape[2]} patch grid; wrote {path} ({grid.width}x{grid.height})"
    )
    return path


if __name__ == "__main__":
    main()
