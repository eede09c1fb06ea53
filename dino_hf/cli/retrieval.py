"""Image retrieval on revisited Oxford/Paris or any query/database folder pair: mAP (Easy/Medium/Hard) and mP@k.

    dino-hf-retrieval --model_name_or_path dino-vits16 --data_path /data/revisitop --dataset roxford5k \
        --allow_unpickling --imsize 224
    dino-hf-retrieval --model_name_or_path dino-vits16 --data_path /data/revisitop --dataset rparis6k \
        --allow_unpickling --imsize 512 --multiscale
    dino-hf-retrieval --model_name_or_path outputs/demo/export --generate_demo_data demo/retrieval

`--data_path` is either the published layout (`<data_path>/<dataset>/jpg/`, `gnd_<dataset>.pkl`, read only with
`--allow_unpickling`) or a folder with `queries/`, `database/` and `ground_truth.json` (docs/retrieval.md).
`--generate_demo_data DIR` writes a small generated dataset in the JSON layout to DIR and evaluates on it.
"""

from __future__ import annotations

import argparse

from dino_hf.cli._evaluation import add_model_and_output_arguments, check_data_source, load_model, write_figures
from dino_hf.evaluation import (
    REVISITED_DATASETS,
    evaluate_retrieval_dataset,
    generate_retrieval_demo,
    load_retrieval_dataset,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_and_output_arguments(parser, "dataset root (see above)")
    parser.add_argument("--dataset", choices=REVISITED_DATASETS, default=None, help="the revisited dataset's name")
    parser.add_argument(
        "--allow_unpickling", action="store_true", help="read the published gnd_*.pkl (a pickle: trusted files only)"
    )
    parser.add_argument("--imsize", type=int, default=224, help="images are shrunk to fit imsize x imsize (224)")
    parser.add_argument("--multiscale", action="store_true", help="average [CLS] over scales 1, 1/sqrt(2), 1/2")
    parser.add_argument("--crop_queries", action="store_true", help="crop queries to their boxes (reference: off)")
    args = parser.parse_args(argv)
    check_data_source(parser, args)
    return args


def main(argv: list[str] | None = None) -> None:
    """The console script: runs [`run`] and returns None (setuptools' wrapper exits with `main()`'s value)."""
    run(argv)


def run(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    data_path = args.data_path or generate_retrieval_demo(args.generate_demo_data)
    dataset = load_retrieval_dataset(data_path, args.dataset, args.allow_unpickling)
    model, extraction = load_model(args)
    print(f"{len(dataset.query_paths)} queries, {len(dataset.database_paths)} database images")
    result = evaluate_retrieval_dataset(model, dataset, args.imsize, args.multiscale, args.crop_queries, **extraction)
    print(result.summary())
    figures = {"mAP": result.mean_ap, "mP@k": result.mean_precision_at}
    write_figures(figures, args.output_file)
    return figures


if __name__ == "__main__":
    main()
