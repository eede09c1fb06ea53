"""Fine-tune a DINO backbone for image classification (the paper's fine-tuning evaluation, DeiT's recipe).

    dino-hf-finetune --model_name_or_path outputs/demo/export --dataset_name embedded --output_dir outputs/finetune-demo
    accelerate launch -m dino_hf.cli.finetune --model_name_or_path dino-vits16 --dataset_name my/dataset \
        --per_device_train_batch_size 128 --push_to_hub --hub_model_id me/dino-vits16-my-dataset

Trains `DinoForImageClassification` (the backbone's weights and a new linear head) with the transformers `Trainer`:
AdamW at 5e-4 x total batch / 512, warm-up then cosine, label smoothing 0.1, weight decay 0.05, drop path 0.1,
`--layer_decay` for layer-wise lr decay; top-1/top-5 accuracy on the evaluation split every epoch. The output folder
works with `pipeline("image-classification")`. `--help` lists every flag; docs/finetuning.md is the guide.
"""

from __future__ import annotations

from transformers import HfArgumentParser

from dino_hf.cli import configure_logging
from dino_hf.evaluation import FinetuneArguments, finetune


def main(argv: list[str] | None = None) -> None:
    """Parse the flags and fine-tune. Returns None (a console script exits with `main()`'s value); the final metrics
    are printed and written to `<output_dir>/finetune_summary.json`."""
    parser = HfArgumentParser(FinetuneArguments)
    parser.description = __doc__.split("\n\n")[0]
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    configure_logging()
    summary = finetune(args)
    accuracy = ", ".join(f"{k} {v:.2f}%" for k, v in summary.metrics.items() if k in ("eval_top1", "eval_top5"))
    print(f"Fine-tuned {args.model_name_or_path} on {args.dataset_name}: {accuracy}; saved to {summary.output_dir}")


if __name__ == "__main__":
    main()
