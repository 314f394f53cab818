"""DDP with an adapted family (``torchrun --nproc-per-node 2``, from tests/test_adapters.py).

Every rank builds the same torchvision ResNet with the paper's MLP head (seed 0) and trains
``DDP(TrainStep(model, SnapMix, CPE))`` on its own data for a few SGD steps; rank 0 writes the
largest parameter difference between the ranks and how far the weights moved (JSON) to
``--out``. The step calls the model through its adapter (camkit.models): the gradients must
still be all-reduced, since the adapter's parameters are the model's.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist
import torchvision.models as tvm
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from benchmarks.runner.io import atomic_write_text
from camkit import ContrastivePatchLoss, SnapMix, TrainStep

STEPS = 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = tvm.ResNet(tvm.resnet.BasicBlock, [1, 1, 1, 1], num_classes=2)
    model.fc = nn.Sequential(nn.Linear(512, 16), nn.ReLU(), nn.Linear(16, 2))
    model.train()
    flat = lambda: torch.cat([p.detach().flatten() for p in model.parameters()])  # noqa: E731
    initial = flat().clone()
    data = torch.Generator().manual_seed(100 + rank)
    mix = SnapMix(num_classes=2, generator=torch.Generator().manual_seed(rank))
    step = DDP(TrainStep(model, mix=mix, cpe=ContrastivePatchLoss()))
    opt = torch.optim.SGD(step.parameters(), lr=0.1, momentum=0.9)
    for _ in range(STEPS):
        images = torch.randn(4, 3, 64, 64, generator=data)
        labels = torch.randint(0, 2, (4,), generator=data)
        opt.zero_grad(set_to_none=True)
        step(images, labels).loss.backward()
        opt.step()
    final = flat()
    gathered = [torch.empty_like(final) for _ in range(world)]
    dist.all_gather(gathered, final)
    if rank == 0:
        report = {
            "world": world,
            "max_param_diff": max(float((g - gathered[0]).abs().max()) for g in gathered),
            "moved": float((final - initial).abs().max()),
        }
        atomic_write_text(json.dumps(report), args.out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
