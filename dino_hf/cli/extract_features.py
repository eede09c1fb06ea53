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
from ..evaluation import eval_batches, extract_features, load_backbone
from ._evaluation import add_eval_data_arguments, add_sample_limit_arguments, dataset_options, eval_batch_options


def main(argv: list[str] | None = None) -> None:
    """The console script: [`run`], returning None (a console script exits with `main()`'s value)."""
    run(argv)


def run(argv: list[str] | None = None) -> Path:
    """Parse the flags and run. The written feature file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_eval_data_arguments(parser, {"split": ("train", None)})
    parser.add_argument("--output_file", required=True, help="*.parquet or *.safetensors")
    parser.add_argument("--normalize", action="store_true", help="L2-normalise the features.")
    parser.add_argument("--n_last_blocks", type=int, default=1, help="Concatenate the [CLS] of the last n blocks.")
    parser.add_argument("--avgpool_patchtokens", action="store_true", help="Append the mean of the patch tokens.")
    add_sample_limit_arguments(parser, "max_samples")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_backbone(args.model_name_or_path).to(device)
    source = load_image_dataset(args.dataset_name, split=args.split, **dataset_options(args))
    batches = eval_batches(source, max_images=args.max_samples, **eval_batch_options(args, model, device))
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
