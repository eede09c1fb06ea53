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
import json
from pathlib import Path

import torch

from dino_hf.evaluation import load_backbone
from dino_hf.evaluation.demo_data import generate_retrieval_demo
from dino_hf.evaluation.features import processor_normalisation
from dino_hf.evaluation.retrieval import REVISITED_DATASETS, evaluate_retrieval_dataset, load_retrieval_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", required=True, help="a saved dino_hf folder (or Hub repo)")
    parser.add_argument("--data_path", type=Path, default=None, help="dataset root (see above)")
    parser.add_argument("--dataset", choices=REVISITED_DATASETS, default=None, help="the revisited dataset's name")
    parser.add_argument(
        "--allow_unpickling", action="store_true", help="read the published gnd_*.pkl (a pickle: trusted files only)"
    )
    parser.add_argument("--imsize", type=int, default=224, help="images are shrunk to fit imsize x imsize (224)")
    parser.add_argument("--multiscale", action="store_true", help="average [CLS] over scales 1, 1/sqrt(2), 1/2")
    parser.add_argument("--crop_queries", action="store_true", help="crop queries to their boxes (reference: off)")
    parser.add_argument("--generate_demo_data", type=Path, default=None, help="write a generated dataset here, use it")
    parser.add_argument("--output_file", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if (args.data_path is None) == (args.generate_demo_data is None):
        parser.error("give exactly one of --data_path and --generate_demo_data")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    data_path = args.data_path or generate_retrieval_demo(args.generate_demo_data)
    dataset = load_retrieval_dataset(data_path, args.dataset, args.allow_unpickling)
    model = load_backbone(args.model_name_or_path).to(args.device)
    mean, std = processor_normalisation(args.model_name_or_path)
    print(f"{len(dataset.query_paths)} queries, {len(dataset.database_paths)} database images")
    result = evaluate_retrieval_dataset(
        model, dataset, args.imsize, args.multiscale, args.crop_queries, mean=mean, std=std, device=args.device
    )
    print(result.summary())
    figures = {"mAP": result.mean_ap, "mP@k": result.mean_precision_at}
    if args.output_file:
        args.output_file.parent.mkdir(parents=True, exist_ok=True)
        args.output_file.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
