"""Command-line programs: each `dino_hf.cli.<name>` has `main(argv=None)` and a `dino-hf-<name>` console script."""
