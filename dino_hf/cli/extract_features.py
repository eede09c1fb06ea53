"""Extract DINO features of a whole `datasets` dataset to a file, for retrieval and clustering.

    dino-hf-extract-features --model_name_or_path outputs/demo/export --dataset_name embedded \
        --split validation --output_file features.parquet

(`python -m dino_hf.cli.extract_features` and, in a clone, `python examples/extract_features.py` are the same program.)

Writes one row per image: its id, its label (when the dataset has one) and its feature (the final-LayerNorm [CLS]
token, L2-normalised with --normalize). `.parquet` keeps any ids; `.safetensors` needs integer ids, so it stores the
row index and writes the ids to a `<file>.ids.json` beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..data import load_image_dataset
from ..evaluation import extract_features, load_backbone
from ..evaluation.eval_data import eval_batches
from ..image_processing_dino import processor_normalisation


def main(argv: list[str] | None = None) -> None:
    """The console script: [`run`], returning None (a console script exits with `main()`'s value)."""
    run(argv)


def run(argv: list[str] | None = None) -> Path:
    """Parse the flags and run. The written feature file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", required=True, help="A DinoViTModel folder, Hub id or training run.")
    parser.add_argument("--dataset_name", default="embedded")
    parser.add_argument("--data_files", default=None)
    parser.add_argument("--split", default="train")
    parser.add_argument("--image_column", default=None)
    parser.add_argument("--label_column", default=None)
    parser.add_argument("--output_file", required=True, help="*.parquet or *.safetensors")
    parser.add_argument("--image_size", type=int, default=None, help="Crop size (default: the model's image_size).")
    parser.add_argument("--normalize", action="store_true", help="L2-normalise the features.")
    parser.add_argument("--n_last_blocks", type=int, default=1, help="Concatenate the [CLS] of the last n blocks.")
    parser.add_argument("--avgpool_patchtokens", action="store_true", help="Append the mean of the patch tokens.")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--num_workers", type=int, default=4)
    parser.add_argument("--max_samples", type=int, default=None)
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_backbone(args.model_name_or_path).to(device)
    mean, std = processor_normalisation(args.model_name_or_path)
    source = load_image_dataset(
        args.dataset_name,
        split=args.split,
        data_files=args.data_files,
        image_column=args.image_column,
        label_column=args.label_column,
    )
    batches = eval_batches(
        source,
        image_size=args.image_size or model.config.image_size,
        mean=mean,
        std=std,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=device,
        max_images=args.max_samples,
    )
    output = Path(args.output_file)
    if output.suffix == ".safetensors":
        ids: list[str] = []

        def numbered(batches):
            for pixels, labels, batch_ids in batches:
                start = len(ids)
                ids.extend(batch_ids)
                yield pixels, labels, torch.arange(start, start + len(batch_ids))

        batches = numbered(batches)
    result = extract_features(
        model,
        batches,
        output,
        n_last_blocks=args.n_last_blocks,
        avgpool_patchtokens=args.avgpool_patchtokens,
        normalize=args.normalize,
        device=device,
    )
    if output.suffix == ".safetensors":
        output.with_suffix(".ids.json").write_text(json.dumps(ids))
    print(f"Wrote {tuple(result['features'].shape)} features of {args.dataset_name}/{args.split} to {output}")
    return output


if __name__ == "__main__":
    main()
