"""docs/own_images.md's table from the logs of own_images_table.sh: `python own_images_table.py OUT`."""

import re
import sys
from pathlib import Path


HEADER = (
    "| set | what --recipe auto measured | random network | after DINO (steps) | dino-hf-knn-eval k=20 "
    "| raw pixels, k=20 | whole pretraining run | both commands, wall | collapse warning |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def row(out: Path, name: str, pretrain_seconds: float, knn_seconds: float) -> str:
    pretraining = (out / f"{name}.pretrain.log").read_text(errors="replace")
    evaluation = (out / f"{name}.knn.log").read_text(errors="replace")
    knn = re.search(r"random init \(step 0\) ([\d.]+)%  ->  trained \(step (\d+)\) ([\d.]+)%", pretraining)
    whole = re.search(r"Whole run, imports and data preparation included: ([\d.]+) of", pretraining)
    profile = re.search(r"--recipe auto: (.*?); ", pretraining)
    model_k20, pixels_k20 = re.findall(r"k=20   top-1 +([\d.]+)%", evaluation)[:2]
    collapse = "yes" if "Possible collapse" in pretraining else "no"
    return (
        f"| {name} | {profile.group(1)} | {knn.group(1)}% | {knn.group(3)}% ({knn.group(2)} steps) | {model_k20}% "
        f"| {pixels_k20}% | {whole.group(1)} min | {pretrain_seconds / 60:.1f} + {knn_seconds / 60:.1f} min "
        f"| {collapse} |"
    )


def main(out: Path) -> None:
    print(HEADER)
    for line in (out / "times.txt").read_text().splitlines():
        name, _, pretrain_seconds, _, knn_seconds = line.split()
        print(row(out, name, float(pretrain_seconds), float(knn_seconds)))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
