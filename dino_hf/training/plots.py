"""Training curves as a PNG, drawn with PIL only (no plotting library needed on a training machine).

`plot_history(history, path)` draws one panel per metric (loss, teacher entropy, KL, prototypes in use, k-NN, ...)
against the step, from the records the training loop logs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw


DEFAULT_PANELS: tuple[tuple[str, str], ...] = (
    ("loss", "loss"),
    ("teacher_entropy", "teacher entropy (ln K = uniform)"),
    ("kl_divergence", "KL(teacher || student)"),
    ("teacher_mean_entropy", "entropy of the mean teacher output"),
    ("knn_top1", "k-NN top-1 of the teacher"),
    ("lr", "learning rate"),
)

_WIDTH, _HEIGHT, _MARGIN = 420, 240, 46
_LINE = (31, 119, 180)
_GRID = (225, 225, 225)
_TEXT = (40, 40, 40)


def _format(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.2e}"
    return f"{value:.3g}"


def _panel(points: list[tuple[float, float]], title: str) -> Image.Image:
    image = Image.new("RGB", (_WIDTH, _HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.text((_MARGIN, 6), title, fill=_TEXT)
    left, top, right, bottom = _MARGIN, 24, _WIDTH - 12, _HEIGHT - 28
    draw.rectangle((left, top, right, bottom), outline=(160, 160, 160))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5 * (abs(y0) or 1), y1 + 0.5 * (abs(y1) or 1)
    for fraction in (0.25, 0.5, 0.75):
        y = bottom - fraction * (bottom - top)
        draw.line((left + 1, y, right - 1, y), fill=_GRID)
    draw.text((4, top - 2), _format(y1), fill=_TEXT)
    draw.text((4, bottom - 10), _format(y0), fill=_TEXT)
    draw.text((left, bottom + 6), _format(x0), fill=_TEXT)
    draw.text((right - 40, bottom + 6), f"step {_format(x1)}", fill=_TEXT)

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / (x1 - x0) * (right - left),
            bottom - (y - y0) / (y1 - y0) * (bottom - top),
        )

    pixels = [to_pixel(x, y) for x, y in points]
    if len(pixels) > 1:
        draw.line(pixels, fill=_LINE, width=2)
    for x, y in pixels if len(pixels) <= 12 else pixels[-1:]:
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=_LINE)
    return image


def plot_history(
    history: Sequence[dict], path: str | Path, panels: Sequence[tuple[str, str]] = DEFAULT_PANELS, columns: int = 3
) -> Path | None:
    """Draw each metric of `history` (records with a `step` key) that has at least one finite value; returns the path,
    or None when there is nothing to draw."""
    drawn = []
    for key, title in panels:
        points = [
            (float(r["step"]), float(r[key]))
            for r in history
            if key in r and isinstance(r[key], (int, float)) and math.isfinite(r[key])
        ]
        if points:
            drawn.append(_panel(points, title))
    if not drawn:
        return None
    rows = math.ceil(len(drawn) / columns)
    sheet = Image.new("RGB", (_WIDTH * min(columns, len(drawn)), _HEIGHT * rows), "white")
    for index, panel in enumerate(drawn):
        sheet.paste(panel, ((index % columns) * _WIDTH, (index // columns) * _HEIGHT))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
