"""Two CPU processes (gloo): the teacher and the center stay identical on both, each reads disjoint data, and the run
ends with no DDP-wrapped model and no process group left."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torchrun_helpers import run_two_processes

from dino_hf.modeling_dino import log_sinkhorn_knopp


def test_two_processes_keep_teacher_and_center_in_sync(tmp_path):
    run_two_processes(Path(__file__).parent / "distributed_worker.py", str(tmp_path), str(tmp_path / "cache"))

    states = [load_file(str(tmp_path / f"rank{rank}.safetensors")) for rank in (0, 1)]
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    assert torch.count_nonzero(states[0]["center"]) > 0  # the center did move

    seen = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert seen[0]["steps"] == seen[1]["steps"] == 4
    for rank in (0, 1):  # `finish_run`: the DDP reducer is gone and the process group destroyed when pretrain returns
        assert seen[rank]["ddp_alive"] == 0 and seen[rank]["process_group"] is False, seen[rank]
    ids = [set(s["ids"]) for s in seen]
    assert len(seen[0]["ids"]) == len(seen[1]["ids"]) == 4 * 4
    assert ids[0].isdisjoint(ids[1])
    # One checkpoint for both processes, with each one's random state and data position.
    checkpoint = tmp_path / "run" / "checkpoint-4"
    assert (checkpoint / "rng_state_0.json").exists() and (checkpoint / "rng_state_1.json").exists()
    trainer_state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert trainer_state["world_size"] == 2 and len(trainer_state["stream_states"]) == 2


def test_sinkhorn_knopp_over_two_processes_is_the_global_batchs(tmp_path):
    run_two_processes(Path(__file__).parent / "sinkhorn_worker.py", str(tmp_path))
    halves = [load_file(str(tmp_path / f"sinkhorn{rank}.safetensors"))["log_targets"] for rank in (0, 1)]
    scores = torch.randn(10, 6, generator=torch.Generator().manual_seed(0)) / 0.07
    torch.testing.assert_close(torch.cat(halves), log_sinkhorn_knopp(scores, 3))
