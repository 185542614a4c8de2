"""Run under torchrun by tests/test_distributed.py: one training step's gradients on a
global batch that does not split evenly, with data parallel and synchronised batch norm.

    torchrun --standalone --nproc-per-node 2 tests/ddp_gradient_check.py OUT.pt

For standard training (with the early-exit penalty) and for memory-efficient training,
process 0 saves the loss over the global batch and every parameter's gradient to OUT.pt;
the test compares them with one process on the whole batch.
"""

from __future__ import annotations

import sys

import torch

from ebnn import distributed as ddp
from ebnn.data import load_dataset
from ebnn.model import build_model
from ebnn.spec import load_spec
from ebnn.train import TrainConfig, _forward_backward, _Step

# 15 examples (8 on process 0, 7 on process 1) whose batch-norm outputs in this untrained
# network are all at least 1e-3 from the sign threshold: no float32 tie (the test checks).
BATCH = torch.arange(0, 15)
CONFIGS = {"standard": TrainConfig(early_exit_reg=0.5),
           "memory-efficient": TrainConfig(memory_efficient=True)}


def build(mode: str) -> torch.nn.Module:
    """The untrained digits network of every run (seed 0), in ``mode``."""
    from ebnn.memeff import make_memory_efficient

    ds = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = build_model(load_spec("digits").with_input(ds.input_shape, ds.classes))
    return make_memory_efficient(model) if mode == "memory-efficient" else model


def main(out: str) -> None:
    ctx = ddp.init_from_env("cpu")
    assert ctx is not None and ctx.world_size == 2
    torch.set_num_threads(1)
    ds = load_dataset("digits", "train")
    idx = ddp.shard(BATCH, ctx.rank, ctx.world_size)
    x, y = torch.as_tensor(ds.x[idx.numpy()]), torch.as_tensor(ds.y[idx.numpy()])
    results = {}
    for mode, config in CONFIGS.items():
        model = ddp.sync_batch_norms(build(mode))
        step = ddp.wrap(_Step(model), ctx)
        loss, _ = _forward_backward(step, x, y, config,
                                    ddp.loss_weight(len(idx), len(BATCH), ctx.world_size))
        total = ddp.all_sum([loss.item() * len(idx)])[0] / len(BATCH)
        results[mode] = {"loss": total, "grads": {k: p.grad.clone()
                                                  for k, p in model.named_parameters()}}
    if ctx.is_main:
        torch.save(results, out)
    ddp.shutdown(wait=True)
    ddp.exit_process(0)


if __name__ == "__main__":
    main(sys.argv[1])
