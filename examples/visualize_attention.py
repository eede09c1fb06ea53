"""Save the last block's self-attention maps of a DINO backbone as a PNG grid (the paper's Figure 1).

    python examples/visualize_attention.py --model_name_or_path dino-vits16 --image_path photo.jpg \
        --image_size 480 480 --output_dir attention --threshold 0.6

Without `--image_path` a synthetic demo image (two shapes on a gradient) is used, so the command runs offline. The
model folder may hold a `DinoViTModel` or a `DinoForSelfDistillation` training run (its teacher backbone is used).
Writes `<output_dir>/attention_grid.png`: the image and every head's map, and below them the masks keeping
`--threshold` of each head's attention mass (no masks with `--threshold 0`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from dino_hf.evaluation import attention_maps, load_backbone, prepare_image, save_attention_grid, threshold_attention


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
    parser.add_argument(
        "--image_size",
        type=int,
        nargs="+",
        default=[480, 480],
        help="H W to resize to, or one number for the shorter side (default: 480 480, as the reference)",
    )
    parser.add_argument("--output_dir", type=Path, default=Path("attention"))
    parser.add_argument("--threshold", type=float, default=0.6, help="attention mass the masks keep; 0: no masks")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if len(args.image_size) not in (1, 2):
        parser.error("--image_size takes one or two numbers")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    model = load_backbone(args.model_name_or_path).to(args.device)
    image = Image.open(args.image_path) if args.image_path else demo_image()
    size = args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size)
    image, pixel_values = prepare_image(image, size, model.config.patch_size)
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
