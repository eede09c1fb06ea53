# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""Throughput of the DINO data pipeline: CPU cost of streaming + decoding, and device-side multi-crop.

The benchmark writes ImageNet-like JPEGs (about 500x375, quality 90, 1/f-noise textures with shapes; a quarter of
them portrait) into local parquet shards, opens them with `load_image_dataset` exactly like a Hub parquet dataset,
and measures:

1. CPU side, for `num_workers` 1 and 2: `build_pretraining_loader` batches per second of wall time, and images
   per CPU-second summed over every process (DataLoader workers and the main process): the cost per core.
2. The reference's way for comparison, on this machine and these files: PIL decode + 2x224 + 10x96 random
   resized crops with PIL bicubic resizing in one process (the geometric part of the reference pipeline only).
3. Device side: `DinoMultiCropAugmentation` (2x224 + 10x96, all photometric operations) images per second, on CUDA
   when available (with CUDA events), else on the CPU.

Run from the repository root:

    python benchmarks/bench_data_pipeline.py            # full run (a few minutes on 2 CPU cores)
    python benchmarks/bench_data_pipeline.py --quick    # < 30 s on CPU
    python benchmarks/bench_data_pipeline.py --json results.json
    python benchmarks/bench_data_pipeline.py --compile  # also with the photometric stage under torch.compile
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dino_hf.data import (  # noqa: E402
    DinoMultiCropAugmentation,
    build_pretraining_loader,
    load_image_dataset,
)
from dino_hf.testing_utils import forbid_host_sync  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------------
# ImageNet-like JPEGs
# ---------------------------------------------------------------------------------------------------------------------


def _pink_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """`(H, W, 3)` noise with a 1/f amplitude spectrum, the spectrum of natural images, scaled to [0, 1]."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    amplitude = 1.0 / np.maximum(np.sqrt(fx**2 + fy**2), 1.0 / max(height, width))
    channels = []
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, size=amplitude.shape)
        channel = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(height, width))
        channels.append(channel)
    noise = np.stack(channels, axis=-1)
    noise -= noise.min()
    return noise / noise.max()


def make_jpeg(rng: np.random.Generator, height: int = 375, width: int = 500, quality: int = 90) -> bytes:
    colour = rng.uniform(0.3, 1.0, size=3)
    pixels = _pink_noise(rng, height, width) * colour * 255
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        x1, y1 = x0 + int(rng.integers(30, 200)), y0 + int(rng.integers(30, 200))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
    grain = rng.normal(0, 6, size=(height, width, 3))
    image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + grain, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_dataset(folder: Path, num_images: int, num_shards: int, seed: int = 0) -> tuple[list[bytes], str]:
    import datasets

    rng = np.random.default_rng(seed)
    # A quarter portrait, at random, so batches mix orientations (and pad to 500 x 500) like ImageNet's.
    jpegs = [make_jpeg(rng, *((500, 375) if rng.random() < 0.25 else (375, 500))) for _ in range(num_images)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    for shard in range(num_shards):
        rows = range(shard, num_images, num_shards)
        table = datasets.Dataset.from_dict(
            {"image": [{"bytes": jpegs[i], "path": None} for i in rows], "label": [i % 1000 for i in rows]},
            features=features,
        )
        table.to_parquet(str(folder / f"train-{shard:05d}-of-{num_shards:05d}.parquet"))
    return jpegs, str(folder / "*.parquet")


# ---------------------------------------------------------------------------------------------------------------------
# CPU accounting
# ---------------------------------------------------------------------------------------------------------------------


def _children_cpu_seconds() -> float:
    """CPU seconds used so far by this process's live children (DataLoader workers), from /proc."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return total


def _self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bench_loader(pattern: str, num_workers: int, batch_size: int, warmup: int, batches: int) -> dict:
    source = load_image_dataset(pattern)
    loader = build_pretraining_loader(
        source, batch_size, num_workers=num_workers, seed=0, shuffle_buffer_size=256, pin_memory=False
    )
    iterator = iter(loader)
    for _ in range(warmup * max(1, num_workers)):
        next(iterator)
    wall, main_cpu, workers_cpu = time.perf_counter(), _self_cpu_seconds(), _children_cpu_seconds()
    images = 0
    for _ in range(batches):
        images += len(next(iterator))
    wall = time.perf_counter() - wall
    main_cpu = _self_cpu_seconds() - main_cpu
    workers_cpu = _children_cpu_seconds() - workers_cpu
    del iterator
    cpu = main_cpu + workers_cpu
    return {
        "num_workers": num_workers,
        "images": images,
        "images_per_s": images / wall,
        "cpu_seconds": cpu,
        "worker_cpu_seconds": workers_cpu,
        "images_per_cpu_second": images / cpu,
    }


def bench_reference_crops(jpegs: list[bytes], seconds: float) -> dict:
    """The reference's CPU work without photometric operations: PIL decode + 12 random resized crops."""
    rng = np.random.default_rng(0)
    start_wall, start_cpu = time.perf_counter(), _self_cpu_seconds()
    done = 0
    while time.perf_counter() - start_wall < seconds:
        image = Image.open(io.BytesIO(jpegs[done % len(jpegs)])).convert("RGB")
        width, height = image.size
        for size, scale in [(224, (0.4, 1.0))] * 2 + [(96, (0.05, 0.4))] * 10:
            area = width * height * rng.uniform(*scale)
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            w = min(width, int(round(np.sqrt(area * aspect))))
            h = min(height, int(round(np.sqrt(area / aspect))))
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            image.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
        done += 1
    return {"images_per_cpu_second": done / (_self_cpu_seconds() - start_cpu)}


def bench_decode_only(jpegs: list[bytes], seconds: float) -> dict:
    start_wall, start_cpu = time.perf_counter(), _self_cpu_seconds()
    done = 0
    while time.perf_counter() - start_wall < seconds:
        Image.open(io.BytesIO(jpegs[done % len(jpegs)])).convert("RGB")
        done += 1
    return {"images_per_cpu_second": done / (_self_cpu_seconds() - start_cpu)}


# ---------------------------------------------------------------------------------------------------------------------
# Device side
# ---------------------------------------------------------------------------------------------------------------------


def bench_augmentation(
    pattern: str, device: torch.device, batch_size: int, iterations: int, threads: int, compile: bool = False
) -> dict:
    source = load_image_dataset(pattern)
    loader = build_pretraining_loader(source, batch_size, num_workers=0, shuffle_buffer_size=batch_size)
    batch = next(iter(loader)).to(device)
    augment = DinoMultiCropAugmentation(compile=compile).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)

    def step():
        out = augment(batch.images, batch.sizes, generator=generator)
        return out.global_crops.sum() + out.local_crops.sum()

    try:
        with torch.inference_mode():
            step()
            host_syncs = "not checked (CPU)"
            if device.type == "cuda":
                torch.cuda.synchronize()
                # The augmentation must never make the host wait for the GPU: any sync raises in this mode.
                try:
                    with forbid_host_sync(device):
                        step()
                    host_syncs = "none"
                except RuntimeError as err:
                    host_syncs = f"SYNC: {err}"
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(iterations):
                    step()
                end.record()
                torch.cuda.synchronize()
                seconds = start.elapsed_time(end) / 1000
            else:
                seconds = time.perf_counter()
                for _ in range(iterations):
                    step()
                seconds = time.perf_counter() - seconds
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "device": str(device),
        "batch_size": len(batch),
        "padded_image": list(batch.images.shape[-2:]),
        "images_per_s": len(batch) * iterations / seconds,
        "torch_threads": threads,
        "compiled": compile,
        "host_syncs": host_syncs,
    }


def describe_machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "cpu": cpu,
        "cores": cores,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pillow": Image.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv: list[str] | None = None) -> dict:
    """Run the measurements, print them and return them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small run (< 30 s on CPU)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="num_workers values to measure")
    parser.add_argument("--device", default=None, help="device for the augmentation (default: cuda if available)")
    parser.add_argument(
        "--compile", action="store_true", help="also measure the augmentation with its photometric stage compiled"
    )
    args = parser.parse_args(argv)

    quick = args.quick
    num_images = 64 if quick else 512
    batch_size = 16 if quick else 64
    loader_batches = 3 if quick else 24
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        device_runs = [(256, 20, torch.get_num_threads(), False)]
    else:
        # On a CPU the thread count matters (and OpenMP suffers on a busy machine): measure 1 and all cores.
        device_runs = [(4 if quick else 16, 1 if quick else 3, t, False) for t in sorted({1, cores})]
    if args.compile:
        device_runs += [(b, n, t, True) for b, n, t, _ in device_runs]

    results: dict = {"machine": describe_machine(), "mode": "quick" if quick else "full"}
    with tempfile.TemporaryDirectory(prefix="dino_hf_bench_") as folder:
        jpegs, pattern = write_dataset(Path(folder), num_images, num_shards=8)
        results["jpeg_kb_mean"] = round(float(np.mean([len(j) for j in jpegs])) / 1000, 1)
        results["decode_only"] = bench_decode_only(jpegs, 1.0 if quick else 4.0)
        results["reference_pil_crops"] = bench_reference_crops(jpegs, 1.0 if quick else 6.0)
        results["loader"] = [
            bench_loader(pattern, w, batch_size, warmup=1 if quick else 2, batches=loader_batches)
            for w in args.workers
        ]
        results["augmentation"] = [bench_augmentation(pattern, device, *run) for run in device_runs]

    machine = results["machine"]
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, load {machine['load_average_at_start']}")
    print(f"JPEGs: ~500x375 (1/4 portrait), quality 90, {results['jpeg_kb_mean']} kB on average")
    print(
        f"decode only (PIL, 1 process):                  {results['decode_only']['images_per_cpu_second']:8.1f} img/CPU-s"
    )
    print(
        f"reference geometry (PIL decode + 12 crops):    {results['reference_pil_crops']['images_per_cpu_second']:8.1f} img/CPU-s"
    )
    for row in results["loader"]:
        print(
            f"loader num_workers={row['num_workers']}: {row['images_per_s']:8.1f} img/s wall, "
            f"{row['images_per_cpu_second']:8.1f} img/CPU-s (all processes: the per-core cost; workers "
            f"{row['worker_cpu_seconds']:.2f} of {row['cpu_seconds']:.2f} CPU-s)"
        )
    for aug in results["augmentation"]:
        print(
            f"device-side augmentation on {aug['device']} (batch {aug['batch_size']}, padded {aug['padded_image']}, "
            f"{aug['torch_threads']} threads{', compiled' if aug['compiled'] else ''}): {aug['images_per_s']:8.1f} img/s"
            + ("" if aug["device"] == "cpu" else f", host syncs: {aug['host_syncs']}")
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
