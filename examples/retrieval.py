"""Image retrieval on revisited Oxford/Paris or any query/database folder pair: mAP (Easy/Medium/Hard) and mP@k.

A thin wrapper over `dino_hf.cli.retrieval` (also installed as the `dino-hf-retrieval` command);
`--help` lists the flags.
"""

from dino_hf.cli.retrieval import main


if __name__ == "__main__":
    main()
