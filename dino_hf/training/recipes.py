"""Named sets of pretraining flags.

`DEMO_RECIPE` is what `python examples/pretrain.py` runs without arguments: a small ViT on the embedded shapes
dataset, offline, in about five minutes on two CPU cores. It departs from the paper's values where a run of a
thousand steps on ten thousand images needs it; docs/training.md gives the measurements behind each choice.
"""

DEMO_RECIPE: dict = {
    "dataset_name": "embedded",
    "output_dir": "outputs/demo",
    "arch": "vit_tiny",
    # 64 px images, 32 px global and 16 px local crops: patch 4 gives the 8 x 8 token grid a 224 px crop has at 28.
    "patch_size": 4,
    "config_overrides": "hidden_size=96,num_hidden_layers=3,num_attention_heads=3,head_hidden_dim=512,head_bottleneck_dim=128",
    "out_dim": 1024,
    # At random initialisation all images give nearly the same [CLS], so the centred teacher is nearly uniform and
    # nothing bootstraps; BatchNorm in the head (the reference's option for ResNets) spreads the batch apart.
    "use_bn_in_head": True,
    # Learned prototypes drift together on small data, flattening the teacher towards uniform; random fixed ones
    # keep it sharp. (Measured: k-NN still rises either way; frozen keeps the collapse monitor quiet.)
    "freeze_last_layer": 5,
    "global_crops_size": 32,
    "local_crops_size": 16,
    "local_crops_number": 4,
    "local_crops_scale": [0.1, 0.4],
    # The paper's blur sigma (0.1-2.0 px) is for 224 px crops; scaled to 32 px.
    "augmentation_overrides": '{"blur_sigma": [0.02, 0.3]}',
    "per_device_train_batch_size": 64,
    "epochs": 5,
    "warmup_epochs": 0.5,
    "lr": 0.004,  # x 64 / 256 = 1e-3
    "weight_decay_end": 0.04,
    "momentum_teacher": 0.99,  # the teacher must follow within a thousand steps
    "warmup_teacher_temp_epochs": 0,
    "teacher_temp": 0.04,
    "num_workers": 1,
    "logging_steps": 25,
    "checkpointing_steps": 1000,
    "knn_at_start_and_end": True,
    "knn_every_steps": 0,
    "knn_train_samples": 5000,
    "knn_eval_samples": 1000,
    "mixed_precision": "no",
}
