"""Named sets of pretraining flags.

`DEMO_RECIPE` is what `python examples/pretrain.py` runs without arguments: a small ViT on the embedded shapes
dataset, offline, in about five minutes on two CPU cores. It is tuned so that learning is visible in such a short
run (see docs/training.md for the reasoning and the measured numbers).
"""

DEMO_RECIPE: dict = {
    "dataset_name": "embedded",
    "output_dir": "outputs/demo",
    "arch": "vit_tiny",
    "patch_size": 4,
    "config_overrides": "hidden_size=96,num_hidden_layers=3,num_attention_heads=3,head_hidden_dim=512,head_bottleneck_dim=128",
    "out_dim": 1024,
    "global_crops_size": 32,
    "local_crops_size": 16,
    "local_crops_number": 4,
    "local_crops_scale": [0.1, 0.4],
    "per_device_train_batch_size": 64,
    "epochs": 3,
    "warmup_epochs": 0.3,
    "lr": 0.004,
    "momentum_teacher": 0.99,
    "warmup_teacher_temp_epochs": 0,
    "teacher_temp": 0.04,
    "freeze_last_layer": 0,
    "num_workers": 1,
    "logging_steps": 25,
    "checkpointing_steps": 1000,
    "knn_every_steps": 0,
    "knn_train_samples": 5000,
    "knn_eval_samples": 1000,
    "mixed_precision": "no",
}
