"""Command-line programs: each `dino_hf.cli.<name>` has `main(argv=None)` and a `dino-hf-<name>` console script."""

import logging


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Send log records to stderr with timestamps: for a command line's `main` only (the library never configures
    the root logger; an application that imports dino_hf keeps its own logging setup)."""
    logging.basicConfig(format=LOG_FORMAT, level=level)
