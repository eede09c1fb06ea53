"""What a run reports about itself: [`training_summary`] (`training_summary.json` and the model card of a finished
run), [`checkpoint_summary`] (the same for a checkpoint exported later) and [`final_metrics`]. Every `*_token` is
masked.
"""

from __future__ import annotations

from typing import Any

from ..publishing import mask_secrets, masked_arguments


def final_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """The last logged metrics, with the last and first k-NN accuracies (`knn_top1`, `knn_top1_at_start`) and the
    raw pixels' (`pixel_knn_top1`, measured at step 0).

    >>> final_metrics([{"step": 0, "knn_top1": 0.3, "pixel_knn_top1": 0.5}, {"step": 10, "loss": 6.5},
    ...                {"step": 10, "knn_top1": 0.7}])
    {'knn_top1': 0.7, 'knn_top1_at_start': 0.3, 'pixel_knn_top1': 0.5}
    """
    metrics = {k: v for k, v in history[-1].items() if k != "step"} if history else {}
    knn_records = [r for r in history if "knn_top1" in r]
    if knn_records:
        metrics["knn_top1"] = knn_records[-1]["knn_top1"]
        metrics["knn_top1_at_start"] = knn_records[0]["knn_top1"]
    pixel_records = [r for r in history if "pixel_knn_top1" in r]
    if pixel_records:
        metrics["pixel_knn_top1"] = pixel_records[0]["pixel_knn_top1"]
    return metrics


def training_summary(
    model_args: Any,
    data_args: Any,
    training_args: Any,
    result: Any,
    world_size: int,
    hub_model_id: str | None = None,
    base_model: str | None = None,
    recipe: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What `training_summary.json` and the model card say about a finished run (every `*_token` masked).
    `base_model`: what the run started from (a Hub id for a released model), default `--model_name_or_path`;
    `recipe`: the `--recipe auto` choices with their reasons."""
    return {
        "hub_model_id": hub_model_id or training_args.hub_model_id,
        "arch": model_args.arch,
        "patch_size": model_args.patch_size,
        "base_model": base_model or getattr(model_args, "model_name_or_path", None),
        "dataset_name": data_args.dataset_name,
        "global_step": result.global_step,
        "world_size": world_size,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "epochs": training_args.epochs,
        "time_budget_minutes": training_args.time_budget_minutes,
        "recipe": recipe,
        "crops": f"2x{data_args.global_crops_size} + {data_args.local_crops_number}x{data_args.local_crops_size}",
        "final_metrics": result.final_metrics,
        "knn": {
            "dataset": data_args.knn_dataset_name or data_args.dataset_name,
            "split": data_args.knn_eval_split,
            "k": data_args.knn_k,
        },
        "args": masked_arguments(model_args, data_args, training_args),
    }


def checkpoint_summary(trainer_state: dict[str, Any], hub_model_id: str | None = None) -> dict[str, Any]:
    """What the card of a checkpoint exported after the run says: its step, its metrics and the run's flags (from
    the checkpoint's `trainer_state.json`)."""
    return {
        "global_step": trainer_state["global_step"],
        "final_metrics": final_metrics(trainer_state.get("history") or []),
        "hub_model_id": hub_model_id,
        "args": mask_secrets(trainer_state.get("args") or {}),
    }


__all__ = ["checkpoint_summary", "final_metrics", "training_summary"]
