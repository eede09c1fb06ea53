"""Read a default from the one place it is written.

Every default of pretraining lives in exactly one dataclass: the model's in `DinoConfig`, the augmentation's in
`MultiCropConfig`, the schedules' in `DinoSchedules`. The command-line argument dataclasses and the schedules read
theirs through `field_default`, so a changed default changes everywhere at once.

Example:

```python
>>> from dino_hf import DinoConfig
>>> from dino_hf.training.defaults import field_default
>>> field_default(DinoConfig, "teacher_temp")
0.07
```
"""

from __future__ import annotations

import dataclasses
from typing import Any


def field_default(owner: type, name: str) -> Any:
    """The default value of dataclass field `name` of `owner` (a `default_factory` is called)."""
    try:
        spec = {f.name: f for f in dataclasses.fields(owner)}[name]
    except KeyError:
        raise AttributeError(f"{owner.__name__} has no dataclass field {name!r}.") from None
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    raise ValueError(f"{owner.__name__}.{name} has no default.")


def mirrored_field(owner: type, name: str, help_text: str) -> Any:
    """A `dataclasses.field` whose default is `owner`'s field `name` (a tuple becomes a list, as argparse gives)."""
    value = field_default(owner, name)
    metadata = {"help": help_text}  # HfArgumentParser passes every metadata key to argparse
    if isinstance(value, (list, tuple)):
        return dataclasses.field(default_factory=lambda: list(value), metadata=metadata)
    return dataclasses.field(default=value, metadata=metadata)
