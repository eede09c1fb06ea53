"""Export the teacher backbone of a dino_hf training checkpoint as a model folder, optionally pushed to the Hub.

    dino-hf-export outputs/dino/checkpoint-1000 exported/ --export_vit_model
    dino-hf-export outputs/dino/checkpoint-1000 dino-vits16-run1 --push_to_hub    # to <user>/dino-vits16-run1

(`python -m dino_hf.cli.export` is the same program.) The folder holds the model, its image processor and a model
card; `--push_to_hub` checks the login and creates the repository (default `<user>/<output folder name>`) before
exporting. The token comes from `--hub_token`, `hf auth login` or `HF_TOKEN`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..publishing import create_hub_repo, upload_to_hub
from ..training.export import export_checkpoint


def main(argv: list[str] | None = None) -> None:
    """The console script: [`run`], returning None (a console script exits with `main()`'s value)."""
    run(argv)


def run(argv: list[str] | None = None) -> Path:
    """Parse the flags and run. The exported model folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="A checkpoint-<step> folder of a training run.")
    parser.add_argument("output_dir", help="Where to write the model folder.")
    parser.add_argument("--export_vit_model", action="store_true", help="Also write a plain ViTModel in vit/.")
    parser.add_argument("--push_to_hub", action="store_true", help="Upload the folder to the Hub.")
    parser.add_argument("--hub_model_id", help="Hub repository (default: <user>/<name of output_dir>).")
    parser.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repository as private.")
    parser.add_argument(
        "--hub_token", default=None, help="Hub token (default: the `hf auth login` one or HF_TOKEN); never written."
    )
    args = parser.parse_args(argv)
    repo_id = None
    if args.push_to_hub:  # before exporting: a login or permission problem shows at once
        repo_id = create_hub_repo(
            args.output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo
        )
    folder = export_checkpoint(args.checkpoint, args.output_dir, args.export_vit_model, hub_model_id=repo_id)
    if repo_id:
        upload_to_hub(folder, repo_id, token=args.hub_token)
    print(folder)
    return folder


if __name__ == "__main__":
    main()
