"""Synthetic datasets in the folder layouts the retrieval, copy-detection and video-segmentation evaluations read
(`--generate_demo_data`), so their commands run offline (the docs' runnable examples and the tests). The labelled
synthetic dataset of pretraining, k-NN and the linear probe is `dino_hf.data.synthetic` ("embedded").

They check that a pipeline runs end to end and that its numbers are computed right; they are not benchmarks.

- [`generate_retrieval_demo`]: "landmarks" (random scenes of coloured shapes) seen through crops of different sizes;
  a query's easy positives are wide views of its scene, hard ones close-ups, junk a tiny crop.
- [`generate_copy_detection_demo`]: originals, near-duplicate distractors, whitening images and transformed copies
  (JPEG quality, crops, a "strong" mix of crop, colour and contrast change, blur and rotation).
- [`generate_video_demo`]: a DAVIS-layout video of two shapes moving over a textured background, with its masks.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter


def random_scene(rng: np.random.Generator, size: int = 192, num_shapes: int = 6) -> Image.Image:
    """A textured two-colour gradient with `num_shapes` random coloured ellipses, rectangles and triangles."""
    low, high = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    ramp = (
        np.linspace(0.0, 1.0, size)[None, :, None]
        if rng.random() < 0.5
        else np.linspace(0.0, 1.0, size)[:, None, None]
    )
    pixels = low + (high - low) * ramp + rng.normal(0.0, 12.0, size=(size, size, 3))
    return draw_shapes(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), rng, num_shapes)


def draw_shapes(image: Image.Image, rng: np.random.Generator, num_shapes: int) -> Image.Image:
    """Draw `num_shapes` random coloured ellipses, rectangles and triangles on a copy of `image`."""
    image, size = image.copy(), image.width
    draw = ImageDraw.Draw(image)
    for _ in range(num_shapes):
        x0, y0 = rng.uniform(0, 0.8 * size, size=2)
        w, h = rng.uniform(0.12 * size, 0.35 * size, size=2)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            draw.polygon([(x0, y0 + h), (x0 + w / 2, y0), (x0 + w, y0 + h)], fill=colour)
    return image


def _view(scene: Image.Image, rng: np.random.Generator, crop: float, size: int) -> Image.Image:
    """A random square crop covering `crop` of the scene's side, resized to `size`, with brightness jitter."""
    side = int(crop * scene.width)
    left, top = rng.integers(0, scene.width - side + 1, size=2)
    view = scene.crop((int(left), int(top), int(left) + side, int(top) + side)).resize((size, size), Image.BICUBIC)
    return ImageEnhance.Brightness(view).enhance(float(rng.uniform(0.85, 1.15)))


def generate_retrieval_demo(
    output_dir: str | Path,
    num_landmarks: int = 4,
    num_distractors: int = 4,
    image_size: int = 64,
    seed: int = 0,
    revisited_name: str | None = None,
) -> Path:
    """Write a retrieval dataset: one query, 2 easy, 2 hard and 1 junk image per landmark, plus distractors.

    The plain layout (`queries/`, `database/`, `ground_truth.json`) by default; with `revisited_name` (e.g.
    `"roxford5k"`) the published layout instead, `<output_dir>/<name>/jpg/` and `gnd_<name>.pkl` (with query boxes
    covering the whole query), to exercise that reader. Returns `output_dir`.
    """
    rng = np.random.default_rng(seed)
    output_dir = Path(output_dir)
    queries, database, ground_truth = {}, {}, {}
    for landmark in range(num_landmarks):
        scene = random_scene(rng)
        queries[f"q{landmark:02d}.jpg"] = _view(scene, rng, 0.9, image_size)
        names = {"easy": [], "hard": [], "junk": []}
        for kind, crop, count in (("easy", 0.85, 2), ("hard", 0.5, 2), ("junk", 0.25, 1)):
            for i in range(count):
                name = f"l{landmark:02d}_{kind}{i}.jpg"
                database[name] = _view(scene, rng, crop, image_size)
                names[kind].append(name)
        ground_truth[f"q{landmark:02d}.jpg"] = names
    for i in range(num_distractors):
        database[f"distractor{i:02d}.jpg"] = _view(random_scene(rng), rng, 0.9, image_size)
    if revisited_name is None:
        for folder, images in (("queries", queries), ("database", database)):
            (output_dir / folder).mkdir(parents=True, exist_ok=True)
            for name, image in images.items():
                image.save(output_dir / folder / name, quality=95)
        (output_dir / "ground_truth.json").write_text(json.dumps(ground_truth, indent=1))
        return output_dir
    folder = output_dir / revisited_name
    (folder / "jpg").mkdir(parents=True, exist_ok=True)
    for name, image in {**queries, **database}.items():
        image.save(folder / "jpg" / name, quality=95)
    imlist = sorted(Path(n).stem for n in database)
    index = {stem: i for i, stem in enumerate(imlist)}
    gnd = [
        {**{k: [index[Path(n).stem] for n in v] for k, v in lists.items()}, "bbx": [0, 0, image_size, image_size]}
        for lists in ground_truth.values()
    ]
    cfg = {"imlist": imlist, "qimlist": [Path(q).stem for q in ground_truth], "gnd": gnd}
    with open(folder / f"gnd_{revisited_name}.pkl", "wb") as handle:
        pickle.dump(cfg, handle)
    return output_dir


COPY_TRANSFORMS = ("jpegqual/10", "crops/50", "strong")


def _copy(image: Image.Image, transform: str, rng: np.random.Generator) -> Image.Image:
    """A Copydays-like transformed copy: low JPEG quality, a central crop keeping a fraction of the area, or a
    'strong' mix of crop, colour change and blur."""
    kind, _, value = transform.partition("/")
    if kind == "jpegqual":
        from io import BytesIO

        buffer = BytesIO()
        image.save(buffer, format="JPEG", quality=int(value))
        return Image.open(BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "crops":
        side = np.sqrt(int(value) / 100.0)
        w, h = image.size
        box = (w * (1 - side) / 2, h * (1 - side) / 2, w * (1 + side) / 2, h * (1 + side) / 2)
        return image.crop(tuple(int(v) for v in box))
    if kind == "strong":
        w, h = image.size
        left, top = rng.uniform(0, 0.2, size=2)
        copy = image.crop((int(left * w), int(top * h), int((left + 0.6) * w), int((top + 0.6) * h)))
        copy = ImageEnhance.Color(copy).enhance(float(rng.uniform(0.2, 1.8)))
        copy = ImageEnhance.Contrast(copy).enhance(float(rng.uniform(0.6, 1.4)))
        return copy.filter(ImageFilter.GaussianBlur(1.5)).rotate(float(rng.uniform(-15, 15)), Image.BICUBIC)
    raise ValueError(f"Unknown transform {transform!r}.")


def generate_copy_detection_demo(
    output_dir: str | Path,
    num_originals: int = 6,
    num_distractors: int = 6,
    num_whitening: int = 12,
    image_size: int = 96,
    transforms: tuple[str, ...] = COPY_TRANSFORMS,
    seed: int = 0,
) -> Path:
    """Write `copies/original/` and `copies/<transform>/` (copies named like their original; the layout
    [`dino_hf.evaluation.copy_detection`] reads), `distractors/` and `whitening/` under `output_dir`. Returns
    `output_dir`.

    Each distractor is a near-duplicate of an original (two more shapes drawn on it), so that a strongly transformed
    copy can be closer to a distractor than to its original.
    """
    rng = np.random.default_rng(seed)
    output_dir = Path(output_dir)
    scenes = {
        "original": [random_scene(rng) for _ in range(num_originals)],
        "whitening": [random_scene(rng) for _ in range(num_whitening)],
    }
    scenes["distractors"] = [
        draw_shapes(scenes["original"][i % num_originals], rng, 2) for i in range(num_distractors)
    ]
    folders = {"original": output_dir / "copies" / "original"}
    for name, images in scenes.items():
        folder = folders.get(name, output_dir / name)
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            image.resize((image_size, image_size), Image.BICUBIC).save(folder / f"{name[:4]}{i:03d}.jpg", quality=95)
    for transform in transforms:
        (output_dir / "copies" / transform).mkdir(parents=True, exist_ok=True)
        for path in sorted(folders["original"].iterdir()):
            copy = _copy(Image.open(path).convert("RGB"), transform, rng)
            copy.save(output_dir / "copies" / transform / path.name, quality=95)
    return output_dir


def _moving_shapes_frame(background: np.ndarray, t: int, num_frames: int, size: int) -> tuple[Image.Image, np.ndarray]:
    """Frame `t`: a red disk moving right and a blue square moving down-left over `background`; label map (0, 1, 2)."""
    progress = t / max(num_frames - 1, 1)
    image = Image.fromarray(background)
    labels = Image.new("L", (size, size), 0)
    draw, draw_labels = ImageDraw.Draw(image), ImageDraw.Draw(labels)
    r = 0.16 * size
    cx, cy = (0.2 + 0.5 * progress) * size, 0.35 * size
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(220, 40, 40))
    draw_labels.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
    s = 0.14 * size
    x, y = (0.75 - 0.3 * progress) * size, (0.55 + 0.2 * progress) * size
    draw.rectangle((x - s, y - s, x + s, y + s), fill=(40, 70, 210))
    draw_labels.rectangle((x - s, y - s, x + s, y + s), fill=2)
    return image, np.asarray(labels)


def generate_video_demo(
    output_dir: str | Path, name: str = "shapes", num_frames: int = 12, size: int = 128, seed: int = 0
) -> Path:
    """Write a DAVIS-layout video: `JPEGImages/480p/<name>/00000.jpg...`, `Annotations/480p/<name>/00000.png...`
    (indexed PNGs with the DAVIS palette: 0 background, 1 the disk, 2 the square) and `ImageSets/2017/val.txt`.

    The background is a fixed noisy gradient; the two objects move by about `size / 20` pixels a frame, so the first
    frame's mask overlaps the last frame's objects poorly. Returns `output_dir`.
    """
    from .video_segmentation import write_indexed_png

    rng = np.random.default_rng(seed)
    output_dir = Path(output_dir)
    ramp = np.linspace(60, 190, size)
    background = np.stack(
        [ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), np.full((size, size), 120.0)], -1
    )
    background = np.clip(background + rng.normal(0, 10, size=background.shape), 0, 255).astype(np.uint8)
    frames, masks = output_dir / "JPEGImages" / "480p" / name, output_dir / "Annotations" / "480p" / name
    frames.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for t in range(num_frames):
        image, labels = _moving_shapes_frame(background, t, num_frames, size)
        image.save(frames / f"{t:05d}.jpg", quality=95)
        write_indexed_png(labels, masks / f"{t:05d}.png")
    (output_dir / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (output_dir / "ImageSets" / "2017" / "val.txt").write_text(f"{name}\n")
    return output_dir


__all__ = ["generate_copy_detection_demo", "generate_retrieval_demo", "generate_video_demo", "random_scene"]
