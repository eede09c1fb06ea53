#!/usr/bin/env python
"""Extract DINO features of a dataset to a file: the same program as `dino-hf-extract-features` and
`python -m dino_hf.cli.extract_features` (see dino_hf/cli/extract_features.py).

    python examples/extract_features.py --model_name_or_path outputs/demo/export --dataset_name embedded \
        --split validation --output_file features.parquet
"""

from dino_hf.cli.extract_features import main


if __name__ == "__main__":
    main()
