"""Every default is written once: the argument dataclasses and the schedules read theirs from the config objects."""

import dataclasses
import json
import logging

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


def test_the_exported_config_records_the_teacher_temperature_the_run_trained_with(tmp_path):
    from dino_hf.training import pretrain

    model_args = DinoModelArguments(
        arch="vit_tiny",
        patch_size=8,
        config_overrides="hidden_size=32,num_hidden_layers=1,num_attention_heads=2,head_hidden_dim=32,head_bottleneck_dim=8",
        out_dim=16,
    )
    data_args = DinoDataArguments(
        dataset_name="embedded",
        embedded_options=json.dumps({"train_per_class": 2, "validation_per_class": 1, "cache_dir": str(tmp_path)}),
        global_crops_size=16,
        local_crops_size=8,
        local_crops_number=1,
        num_workers=0,
        shuffle_buffer_size=4,
    )
    training_args = DinoTrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=2,
        epochs=1,
        steps_per_epoch=1,
        warmup_epochs=0,
        warmup_teacher_temp_epochs=0,
        teacher_temp=0.04,
        progress_bar=False,
    )
    root_handlers = list(logging.getLogger().handlers)
    result = pretrain(model_args, data_args, training_args)
    assert logging.getLogger().handlers == root_handlers  # the library never configures logging
    assert result.model.config.teacher_temp == 0.04
    assert json.loads((result.export_dir / "config.json").read_text())["teacher_temp"] == 0.04


def test_loader_keyword_defaults_that_arguments_mirror_are_the_same():
    import inspect

    from dino_hf.data import build_pretraining_loader

    loader_defaults = {
        name: p.default
        for name, p in inspect.signature(build_pretraining_loader).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    data_defaults = _defaults(DinoDataArguments)
    assert loader_defaults["shuffle_buffer_size"] == data_defaults["shuffle_buffer_size"]
