"""The ``tta`` row of ``benchmarks/perf.py``: CAM-masking TTA with early exit vs the full vote
vs the released protocol, on the COVID-CT test split (synthetic images without it)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from benchmarks.harness import sync
from benchmarks.perfcases.common import RESULTS_DIR, log
from benchmarks.reference import released_tta
from benchmarks.runner.io import atomic_save, load_checkpoint


class _ForwardCounter:
    """Counts images entering the model's first convolution (one per image-forward)."""

    def __init__(self, model: torch.nn.Module) -> None:
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        self.count = 0
        self.handle = first.register_forward_pre_hook(self._hook)

    def _hook(self, _module, args) -> None:
        self.count += int(args[0].shape[0])

    def take(self) -> int:
        value, self.count = self.count, 0
        return value


def bench_tta(cfg: dict, device: torch.device, args: argparse.Namespace) -> dict:
    import timm

    from benchmarks.runner.data import data_root
    from benchmarks.runner.loop import selected_weights
    from benchmarks.runner.models import create_model
    from benchmarks.runner.recipes import RECIPES, RunConfig
    from benchmarks.runner.run import Runner

    c = cfg["tta"]
    size, k, theta = c["size"], c["k"], c["theta"]
    patch = max(1, size // 28)  # 8 px at 224², 4 px at 112²: a 28×28 grid as in the paper
    info: dict[str, object] = {"size": size, "k": k, "theta": theta, "patch_size": patch}
    root = data_root()
    recipe = RECIPES["site-B"].replace(img_size=size, epochs=c["epochs"])
    folder = RESULTS_DIR.parents[1] / "runs" / "perf_tta"  # the runner's checkpoints and rows
    run = RunConfig("site-B", "baseline", 0, recipe, folder)
    runner = Runner(folder / "results.json", device, log=lambda msg: log(f"[tta] {msg}"))
    if root is not None and (root / "COVID-CT").is_dir():
        data = runner.data(run)
        x_test, y_test = data.tests["site-B"]
        if c["limit"] is not None and c["limit"] < len(y_test):  # evenly spaced: both classes
            keep = [int(i * len(y_test) / c["limit"]) for i in range(c["limit"])]
            x_test, y_test = x_test[keep], y_test[keep]
        x_test = torch.cat([data.to_input(x_test[i : i + 64]) for i in range(0, len(y_test), 64)])
        info["data"] = f"COVID-CT test split ({len(y_test)} images) from {root / 'COVID-CT'}"
    else:
        log("[tta] COVID-CT not found (set CAMKIT_DATA): using synthetic images")
        gen = torch.Generator().manual_seed(0)
        n = c["limit"] or 32
        x_test, y_test = torch.randn(n, 3, size, size, generator=gen), torch.arange(n) % 2
        info["data"] = f"synthetic ({n} random images): COVID-CT not found"

    if args.checkpoint:
        model = timm.create_model("resnet18", pretrained=False, num_classes=2)
        model.load_state_dict(load_checkpoint(args.checkpoint))
        model = model.to(device).eval()
        info["model"] = f"resnet18 from --checkpoint {args.checkpoint}"
    elif c["epochs"] > 0 and root is not None:
        log(f"[tta] the site-B baseline of the runner: resnet18 at {size}², {c['epochs']} epochs")
        rows = runner.run(run)
        state = selected_weights(run)
        model = create_model(recipe, 2, device, state=state).eval()
        info["model"] = (
            f"resnet18 trained here from scratch by the runner (site-B baseline recipe, "
            f"{c['epochs']} epochs, the epoch chosen on validation)"
        )
        info["training"] = {k: rows[0][k] for k in ("train_seconds", "epochs", "best_epoch")}
        if args.save_checkpoint:
            atomic_save(model.state_dict(), args.save_checkpoint)
            info["saved_checkpoint"] = str(args.save_checkpoint)
    else:
        torch.manual_seed(0)
        model = timm.create_model("resnet18", pretrained=False, num_classes=2).to(device).eval()
        info["model"] = "resnet18, random init (smoke mode)"
    with torch.no_grad():
        preds = torch.cat([model(x_test[i : i + 64].to(device)).argmax(1).cpu()
                           for i in range(0, len(y_test), 64)])  # fmt: skip
    info["accuracy_plain"] = float((preds == y_test.cpu()).float().mean())

    log(f"[tta] plain accuracy {info['accuracy_plain']:.3f}; θ = {theta} (paper)")
    main = _tta_protocols(model, x_test, y_test, k, theta, patch, c["chunk"], device)
    info["paper_theta"] = main
    flat = {
        "tta_forwards_per_image": main["forwards_per_image"]["early_exit"],
        "tta_forwards_per_image_full_vote": main["forwards_per_image"]["full_vote"],
        "tta_forwards_per_image_released": main["forwards_per_image"]["released"],
        "tta_speedup_vs_full_vote": main["speedup_vs_full_vote"],
        "tta_speedup_vs_released": main["speedup_vs_released"],
        "tta_labels_identical": main["labels_identical"],
        "tta_flips": float(main["flips"]),
        "tta_accuracy_plain": info["accuracy_plain"],
        "tta_accuracy_tta": main["accuracy_tta"],
    }
    stress_theta = c.get("stress_theta")
    if stress_theta is not None:
        # θ = 0.5: a copy supports the prediction only while it keeps it, so votes split and
        # labels flip — the setting that exercises the early exit and the vote count
        log(f"[tta] stress setting θ = {stress_theta}")
        # (early exit vs full vote only: the released protocol's vote is checked against camkit's
        # with flips in tests/test_benchmarks.py)
        stress = _tta_protocols(
            model, x_test, y_test, k, stress_theta, patch, c["chunk"], device, released=False
        )
        info["stress_theta"] = stress
        flat.update(
            tta_stress_forwards_per_image=stress["forwards_per_image"]["early_exit"],
            tta_stress_speedup_vs_full_vote=stress["speedup_vs_full_vote"],
            tta_stress_labels_identical=stress["labels_identical"],
            tta_stress_flips=float(stress["flips"]),
        )
    return {"flat": flat, "details": info}


def _tta_protocols(
    model: torch.nn.Module,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    k: int,
    theta: float,
    patch: int,
    chunk: int,
    device: torch.device,
    *,
    released: bool = True,
) -> dict:
    """Early exit, full vote and the released protocol over the test images, chunk by chunk.

    Each chunk runs the methods back to back (who goes first rotates); the speedups are medians
    over chunks of the per-chunk time ratios. Image-forwards are counted by a hook on the model's
    first convolution. ``released=False`` leaves the released protocol out.
    """
    from camkit import CAMMaskingTTA

    early = CAMMaskingTTA(model, k=k, theta=theta, patch_size=patch, early_exit=True)
    full = CAMMaskingTTA(model, k=k, theta=theta, patch_size=patch, early_exit=False)
    counter = _ForwardCounter(model)
    methods = ("early_exit", "full_vote", "released") if released else ("early_exit", "full_vote")
    labels: dict[str, list[torch.Tensor]] = {name: [] for name in methods}
    forwards = {name: 0 for name in labels}
    reported_forwards: list[torch.Tensor] = []
    times: dict[str, list[float]] = {name: [] for name in labels}
    n = len(y_test)
    log(f"  {n} test images in chunks of {chunk}, {', '.join(methods)} back to back per chunk")
    try:
        for ci, lo in enumerate(range(0, n, chunk)):
            xb = x_test[lo : lo + chunk].to(device)
            runs: dict[str, Callable[[], object]] = {
                "early_exit": partial(early.predict, xb),
                "full_vote": partial(full.predict, xb),
                "released": partial(released_tta, model, xb, k=k, theta=theta, patch_size=patch),
            }
            order = list(methods)
            order = order[ci % len(order) :] + order[: ci % len(order)]  # rotate who goes first
            for name in order:
                counter.take()
                sync(device)
                t0 = time.perf_counter()
                result = runs[name]()
                sync(device)
                times[name].append(time.perf_counter() - t0)
                forwards[name] += counter.take()
                if name == "released":
                    labels[name].append(result.cpu())
                else:
                    labels[name].append(result.labels.cpu())
                    if name == "early_exit":
                        reported_forwards.append(result.forwards.cpu())
            log(
                f"  chunk {ci + 1}: "
                + ", ".join(f"{name} {times[name][-1]:.1f}s" for name in labels)
            )
    finally:
        counter.handle.remove()
    lab = {name: torch.cat(v) for name, v in labels.items()}
    mismatch_full = int((lab["early_exit"] != lab["full_vote"]).sum())
    mismatch_released = int((lab["early_exit"] != lab["released"]).sum()) if released else None
    per_image = {name: forwards[name] / n for name in forwards}

    def speedup(name: str) -> float:
        return float(
            statistics.median(a / b for a, b in zip(times[name], times["early_exit"], strict=True))
        )

    out = {
        "theta": theta,
        "images": n,
        "chunks": len(times["early_exit"]),
        "forwards_per_image": per_image,
        "forwards_reported_by_camkit": int(torch.cat(reported_forwards).sum()) / n,
        "median_chunk_seconds": {name: statistics.median(v) for name, v in times.items()},
        "total_seconds": {name: sum(v) for name, v in times.items()},
        "speedup_vs_full_vote": speedup("full_vote"),
        "speedup_vs_released": speedup("released") if released else None,
        "label_mismatches_vs_full_vote": mismatch_full,
        "label_mismatches_vs_released": mismatch_released,
        "labels_identical": mismatch_full == 0 and not mismatch_released,
        "flips": int((lab["early_exit"] != _argmax_labels(model, x_test, device)).sum()),
        "accuracy_tta": float((lab["early_exit"] == y_test).float().mean()),
    }
    log(
        f"  forwards/image {per_image}, speedup vs full vote {out['speedup_vs_full_vote']:.2f}×"
        + (f", vs released {out['speedup_vs_released']:.2f}×" if released else "")
        + f", labels identical {out['labels_identical']}, flips {out['flips']}"
    )
    return out


@torch.no_grad()
def _argmax_labels(model: torch.nn.Module, images: torch.Tensor, device: torch.device):
    return torch.cat(
        [model(images[i : i + 64].to(device)).argmax(1).cpu() for i in range(0, len(images), 64)]
    )
