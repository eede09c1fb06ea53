"""Copy detection (Copydays protocol) on a folder of originals and folders of transformed copies: mAP per block.

    dino-hf-copy-detection --model_name_or_path dino-vitb8 --data_path /data/copydays --prefix_length 4 \
        --distractors_path /data/yfcc_10k --whitening_path /data/yfcc_20k --imsize 320
    dino-hf-copy-detection --model_name_or_path outputs/demo/export --generate_demo_data demo/copydays --imsize 96

`--data_path` holds `original/` (the database) and any other folders of copies, each a query block (Copydays:
`strong/`, `jpegqual/<q>/`, `crops/<p>/`). A copy matches the original with its file stem (or `<stem>_...`), or with
`--prefix_length n` the originals sharing its first n characters (Copydays: 4). `--generate_demo_data DIR` writes a
small generated dataset to DIR (`copies/`, `distractors/`, `whitening/`) and evaluates on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dino_hf.cli._evaluation import add_model_and_output_arguments, check_data_source, load_model, write_figures
from dino_hf.evaluation import evaluate_copy_detection, generate_copy_detection_demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_and_output_arguments(parser, "original/ and folders of copies")
    parser.add_argument("--distractors_path", type=Path, default=None, help="images added to the database")
    parser.add_argument("--whitening_path", type=Path, default=None, help="images to learn the PCA whitening on")
    parser.add_argument("--prefix_length", type=int, default=None, help="match copies by this many first characters")
    parser.add_argument("--imsize", type=int, default=320, help="images are resized to imsize x imsize (320)")
    parser.add_argument("--top_k", type=int, default=20, help="results per query scored (20)")
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args(argv)
    check_data_source(parser, args)
    if args.generate_demo_data is not None:
        root = generate_copy_detection_demo(args.generate_demo_data)
        args.data_path = root / "copies"
        args.distractors_path = args.distractors_path or root / "distractors"
        args.whitening_path = args.whitening_path or root / "whitening"
    return args


def main(argv: list[str] | None = None) -> None:
    """The console script: runs [`run`] and returns None (setuptools' wrapper exits with `main()`'s value)."""
    run(argv)


def run(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    model, extraction = load_model(args)
    results = evaluate_copy_detection(
        model, args.data_path, args.distractors_path, args.whitening_path, args.prefix_length, args.top_k,
        image_size=args.imsize, batch_size=args.batch_size, **extraction,
    )  # fmt: skip
    for block, value in results.items():
        print(f"eval on {block} mAP={value:.3f}")
    write_figures(results, args.output_file)
    return results


if __name__ == "__main__":
    main()
