"""Every default is written once: the argument dataclasses and the schedules read theirs from the config objects."""

import dataclasses

import pytest

from dino_hf import DinoConfig
from dino_hf.data import MultiCropConfig
from dino_hf.modeling_dino import DinoHead
from dino_hf.training import DinoDataArguments, DinoModelArguments, DinoTrainingArguments
from dino_hf.training.defaults import field_default, mirrored_field
from dino_hf.training.schedules import DinoSchedules


# Which config object holds the default of each argument that has a twin there.
OWNERS = {
    DinoModelArguments: DinoConfig,
    DinoDataArguments: MultiCropConfig,
    DinoTrainingArguments: DinoSchedules,
}


def _fields_with_defaults(owner) -> set[str]:
    missing = dataclasses.MISSING
    return {f.name for f in dataclasses.fields(owner) if f.default is not missing or f.default_factory is not missing}


def _defaults(cls) -> dict:
    instance = cls(steps_per_epoch=1, epochs=1) if cls is DinoSchedules else cls()
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("arguments", list(OWNERS), ids=lambda c: c.__name__)
def test_argument_defaults_equal_the_config_fields_they_mirror(arguments):
    owner = OWNERS[arguments]
    owner_fields = _fields_with_defaults(owner)
    argument_defaults = _defaults(arguments)
    shared = sorted(owner_fields & set(argument_defaults))
    assert shared, f"{arguments.__name__} mirrors nothing of {owner.__name__}"
    for name in shared:
        expected = field_default(owner, name)
        value = argument_defaults[name]
        assert (list(value) if isinstance(value, (list, tuple)) else value) == (
            list(expected) if isinstance(expected, (list, tuple)) else expected
        ), name


def test_an_argument_named_like_another_config_field_mirrors_it_too():
    owners = (DinoConfig, MultiCropConfig, DinoSchedules)
    for arguments in OWNERS:
        defaults = _defaults(arguments)
        for owner in owners:
            for name in _fields_with_defaults(owner) & set(defaults):
                expected = field_default(owner, name)
                value = defaults[name]
                as_list = list if isinstance(expected, (list, tuple)) else (lambda v: v)
                assert as_list(value) == as_list(expected), f"{arguments.__name__}.{name} vs {owner.__name__}"


def test_schedules_and_head_read_the_config():
    assert field_default(DinoSchedules, "teacher_temp") == field_default(DinoConfig, "teacher_temp")
    assert field_default(MultiCropConfig, "global_crops_size") == field_default(DinoConfig, "image_size")
    assert DinoConfig.from_preset("vit_small").patch_size == field_default(DinoConfig, "patch_size")
    head = DinoHead(in_dim=8)
    assert head.last_layer.weight_v.shape[0] == field_default(DinoConfig, "out_dim")


def test_field_default_errors_and_list_defaults():
    with pytest.raises(AttributeError, match="no dataclass field"):
        field_default(DinoConfig, "nope")

    @dataclasses.dataclass
    class Owner:
        scale: tuple = (0.1, 0.2)

    @dataclasses.dataclass
    class Args:
        scale: list = mirrored_field(Owner, "scale", "help")

    first, second = Args(), Args()
    assert first.scale == [0.1, 0.2] and first.scale is not second.scale  # a fresh list each time
