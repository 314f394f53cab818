"""A DDP training run, started by ``torchrun --nproc-per-node 2`` from tests/test_train_ddp.py.

Every rank builds the same model (seed 0) and trains it for a few SGD steps on its own data
(seed = rank), then rank 0 writes what the test compares (JSON) to ``--out``:

- ``step``: ``DDP(TrainStep(model, snapmix, cpe))``, the documented recipe;
- ``accumulate``: the same, two micro-batches per optimiser step, the first under ``no_sync()``;
- ``naive``: the negative control, the hand-written loop a user would write around
  ``CAMExtractor(ddp.module)``: the training forward bypasses DDP, gradients are never averaged;
- ``timm_task``: :class:`camkit.timm_task.TrainStepTask` through its ``prepare_distributed``.

The report holds the largest parameter difference between the ranks, each rank's
``num_batches_tracked`` of the first BatchNorm, and the errors camkit raised for DDP-wrapped
models.
"""

from __future__ import annotations

import argparse
import json

import timm
import torch
import torch.distributed as dist
from timm.loss import SoftTargetCrossEntropy
from torch.nn.parallel import DistributedDataParallel as DDP

from benchmarks.runner.io import atomic_write_text
from camkit import CAMExtractor, CAMMaskingTTA, ContrastivePatchLoss, SnapMix, TrainStep

STEPS = 3


def _flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _errors(ddp_model: DDP) -> dict[str, str]:
    """What camkit says when handed the DDP wrapper itself."""
    messages = {}
    for name, build in (
        ("extractor", lambda: CAMExtractor(ddp_model)),
        ("train_step", lambda: TrainStep(ddp_model)),
        ("tta", lambda: CAMMaskingTTA(ddp_model)),
    ):
        try:
            build()
            messages[name] = ""
        except TypeError as err:
            messages[name] = str(err)
    return messages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("step", "accumulate", "naive", "timm_task"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=2).train()
    initial = _flat_params(model).clone()
    data = torch.Generator().manual_seed(100 + rank)  # rank-different data
    batches = [
        (torch.randn(4, 3, 64, 64, generator=data), torch.randint(0, 2, (4,), generator=data))
        for _ in range(2 * STEPS)
    ]
    mix = SnapMix(num_classes=2, generator=torch.Generator().manual_seed(rank))
    cpe = ContrastivePatchLoss(normalize=True, temperature=0.1)

    errors: dict[str, str] = {}
    if args.mode in ("step", "accumulate"):
        step = DDP(TrainStep(model, mix=mix, cpe=cpe))
        errors = _errors(DDP(model))
        opt = torch.optim.SGD(step.parameters(), lr=0.1, momentum=0.9)
        for i in range(STEPS):
            opt.zero_grad(set_to_none=True)
            if args.mode == "step":
                step(*batches[i]).loss.backward()
            else:
                with step.no_sync():
                    (step(*batches[2 * i]).loss / 2).backward()
                (step(*batches[2 * i + 1]).loss / 2).backward()
            opt.step()
    elif args.mode == "naive":
        ddp = DDP(model)
        ext = CAMExtractor(ddp.module)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        soft_ce = SoftTargetCrossEntropy()
        for i in range(STEPS):
            images, labels = batches[i]
            cams = ext.forward_frozen(images, labels).cams
            mixed, soft = mix(images, labels, cams)
            out = ext(mixed, target=soft.argmax(1))
            loss = soft_ce(out.logits, soft) + cpe(out.features, out.cams)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        from camkit.timm_task import TrainStepTask

        task = TrainStepTask(model, mix=mix, cpe=cpe).prepare_distributed()
        opt = torch.optim.SGD(task.parameters(), lr=0.1, momentum=0.9)
        for i in range(STEPS):
            opt.zero_grad(set_to_none=True)
            task(*batches[i])["loss"].backward()
            opt.step()

    flat = _flat_params(model)
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    tracked = torch.tensor([int(model.bn1.num_batches_tracked)])
    all_tracked = [torch.empty_like(tracked) for _ in range(world)]
    dist.all_gather(all_tracked, tracked)
    if rank == 0:
        report = {
            "world": world,
            "max_param_diff": max(float((g - gathered[0]).abs().max()) for g in gathered),
            "moved": float((flat - initial).abs().max()),
            "num_batches_tracked": [int(t) for t in all_tracked],
            "errors": errors,
        }
        atomic_write_text(json.dumps(report), args.out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
