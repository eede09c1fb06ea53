"""Elastic resume: a checkpoint of two processes continues in one, and one of one process continues in two, with
the teacher, center, optimizer and schedules carried over and no jump in the loss."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_pretrain import tiny_run
from torchrun_helpers import run_two_processes

from dino_hf.training import checkpointing as ckpt
from dino_hf.training import pretrain


# 40 embedded images (4 per class): the schedules' epoch is 40 images whatever the total batch.
DATA = {"num_workers": 0}
TRAINING = {
    "steps_per_epoch": None,
    "epochs": 2,
    "warmup_epochs": 0.5,
    "warmup_teacher_temp_epochs": 2,
    "save_total_limit": 5,
}


def _two_processes(cache_dir: Path, runs: list) -> None:
    runs = [[str(out), {**TRAINING, **training}] for out, training in runs]
    run_two_processes(Path(__file__).parent / "elastic_worker.py", str(cache_dir), json.dumps(runs))


def _state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def _records(history: list[dict]) -> dict[int, dict]:
    return {r["step"]: r for r in history if "loss" in r}


def _distance(a: dict, b: dict, prefix: str) -> float:
    keys = [k for k in a if k.startswith(prefix)]
    return sum(float((a[k] - b[k]).float().norm()) for k in keys)


def _adam_steps(checkpoint: Path) -> int:
    # The head's last layer, frozen during the first epoch, has fewer steps than the rest.
    return max(int(v["step"]) for v in ckpt.load_optimizer_state(checkpoint)["state"].values())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`one`: one process x 4 images, `two`: two processes x 4 images, 8 steps each; checkpoints every 4 steps.
    Then `two_in_one` continues `two`'s step-4 checkpoint in one process (and this one watches its first step), and
    `one_in_two` continues `one`'s step-4 checkpoint in two processes."""
    root = tmp_path_factory.mktemp("elastic")
    cache = root / "cache"
    one = {**TRAINING, "max_steps": 8, "checkpointing_steps": 4}
    pretrain(*tiny_run(root / "one", cache, data=DATA, training=one))
    _two_processes(
        cache,
        [
            (root / "two", {"max_steps": 8, "checkpointing_steps": 4}),
            (root / "one_in_two", {"max_steps": 4, "resume_from_checkpoint": str(root / "one" / "checkpoint-4")}),
        ],
    )
    first_step = {}

    def watch(step, batch, output, model):
        if not first_step:
            first_step.update(step=step, state={k: v.clone() for k, v in model.state_dict().items()})

    resumed = {**TRAINING, "max_steps": 12, "resume_from_checkpoint": str(root / "two" / "checkpoint-4")}
    pretrain(*tiny_run(root / "two_in_one", cache, data=DATA, training=resumed), step_callback=watch)
    return root, first_step


def _assert_continues(resumed: dict[int, dict], uninterrupted: dict[int, dict], matches: dict[int, int]):
    """Every resumed step has the schedules of the uninterrupted step at the same images seen, and the first ones a
    loss close to it, far from where a restarted run would be (its step 1): no jump. (Later steps drift apart
    legitimately: the per-process batch, hence the center's and the loss's batch statistics, changed.)"""
    restart = uninterrupted[1]["loss"]
    for index, (mine, theirs) in enumerate(matches.items()):
        for key in ("momentum", "weight_decay", "teacher_temp", "epoch"):
            assert resumed[mine][key] == pytest.approx(uninterrupted[theirs][key], rel=1e-6, abs=1e-4), (key, mine)
        if index < 2:
            gap = abs(resumed[mine]["loss"] - uninterrupted[theirs]["loss"])
            assert gap < 0.15 * uninterrupted[theirs]["loss"] and gap < abs(resumed[mine]["loss"] - restart) / 3


def test_two_process_checkpoint_continues_in_one_process(runs):
    root, first_step = runs
    saved = root / "two" / "checkpoint-4"
    final = root / "two_in_one" / "checkpoint-12"
    # 32 images seen = step 8 of a run of 4 images per step; 4 more steps to step 12, 48 images.
    assert first_step["step"] == 9 and _state(final)["images_seen"] == 48
    assert _adam_steps(final) == 4 + 4  # the optimizer continued (a fresh one would count 4)
    # After one step, the teacher and center are one EMA step away from the checkpoint's.
    checkpoint = load_file(str(saved / "model.safetensors"))
    after = first_step["state"]
    center = checkpoint["center.center"]
    assert float((after["center.center"] - center).norm()) < 0.2 * float(center.norm())
    teacher_move = _distance(after, checkpoint, "teacher.")
    student_gap = sum(
        float((checkpoint[k] - checkpoint["student." + k[len("teacher.") :]]).float().norm())
        for k in checkpoint
        if k.startswith("teacher.")
    )
    assert teacher_move < 0.05 * student_gap
    # Step 2k - 1 of the resumed run starts at the images seen of step k of the uninterrupted one.
    two = _records(_state(root / "two" / "checkpoint-8")["history"])
    _assert_continues(_records(_state(final)["history"]), two, {2 * k - 1: k for k in range(5, 7)})


def test_one_process_checkpoint_continues_in_two_processes(runs):
    root, _ = runs
    final = root / "one_in_two" / "checkpoint-4"
    state = _state(final)
    # 16 images seen = step 2 of a run of 8 images per step; 2 more steps.
    assert state["world_size"] == 2 and state["images_seen"] == 32
    assert _adam_steps(final) == 4 + 2
    one = _records(_state(root / "one" / "checkpoint-8")["history"])
    _assert_continues(_records(state["history"]), one, {k: 2 * k - 1 for k in range(3, 5)})
