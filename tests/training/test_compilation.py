"""Regional compilation (`--torch_compile`): compiled blocks share one graph per resolution, with stochastic depth and
gradient checkpointing, and compiled drop path keeps its distribution.

Compiled paths use the `aot_eager` backend here (dynamo capture, AOTAutograd and the recompilation behaviour, without
minutes of C++ compilation on a CPU). That a compiled step computes what the eager one does is checked by
`benchmarks/check_train_step.py` (its tests on the CPU, `benchmarks/run_gpu_checks.sh` with inductor on a GPU).
"""

import torch

from dino_hf.modeling_dino import DinoDropPath
from dino_hf.testing_utils import fresh_accelerator, synthetic_crops, tiny_config, tiny_training_step, warmup_values
from dino_hf.training.compilation import compile_blocks


BATCH = 2
CROPS = (2, 32, 2, 16)  # 2 global crops at the tiny config's 32 px, 2 local crops at 16 px


def test_compiled_blocks_share_one_graph_per_resolution_with_drop_path_and_checkpointing():
    # Dynamo's caches outlive a test: blocks compiled earlier in this process (e.g. by
    # benchmarks/tests/test_check_train_step.py on the same pytest-xdist worker) would be reused, never reaching the
    # counting backend.
    torch._dynamo.reset()
    graphs = []
    eager_backend = torch._dynamo.lookup_backend("aot_eager")

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return eager_backend(graph_module, example_inputs)

    accelerator = fresh_accelerator("no", cpu=True)
    config = tiny_config(drop_path_rate=0.2, num_hidden_layers=3)
    setup = tiny_training_step(accelerator, config, gradient_checkpointing=True)
    assert compile_blocks(setup.dino, backend=counting_backend) == 6
    crops = synthetic_crops(BATCH, *CROPS, accelerator.device)
    losses = [setup.step(*crops, warmup_values(0)).output.loss.detach()]
    # Teacher blocks at 32 px (no gradient), student blocks at 32 px and at 16 px: one graph each, whatever the
    # block's drop-path rate (0, 0.1, 0.2) -- no graph break, no recompilation per block.
    assert len(graphs) == 3
    for index in range(1, 4):  # a new teacher temperature, learning rate and drop-path mask every step
        losses.append(setup.step(*crops, warmup_values(index)).output.loss.detach())
    assert len(graphs) == 3
    assert torch.isfinite(torch.stack(losses)).all()


def test_compiled_drop_path_keeps_the_distribution():
    drop = DinoDropPath(0.25).train()
    compiled = torch.compile(drop, backend="aot_eager", dynamic=False)
    hidden = torch.ones(20000, 1, 3)
    out = compiled(hidden)
    kept = out[:, 0, 0] != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.02
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.75))
    assert torch.equal(out[~kept], torch.zeros_like(out[~kept]))
