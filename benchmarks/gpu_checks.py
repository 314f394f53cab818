"""CUDA checks for camkit, run by ``benchmarks/gpu_check.sh`` on a GPU machine.

Each check prints one line ``CHECK <name>: PASS|FAIL <details>``; timings print as ratios measured
side by side. Checks:

1. exact CAM identity on CUDA in float32 (resnet50) and finiteness under bf16 autocast +
   channels_last;
2. no host synchronisation in a full training step (frozen CAM pass → SnapMix → one forward with
   CAMs → SnapMix CE + CPE → backward → SGD step), with ``torch.cuda.set_sync_debug_mode("error")``;
3. ``torch.compile`` of the extractor in the full step: same loss as eager, and the speed ratio;
4. CAM-masking TTA on CUDA: early exit gives the full vote's labels with fewer forwards;
5. step-time ratios (plain, +CPE, +SnapMix, full) at resnet50 224² batch 64, bf16, channels_last.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
from timm.loss import SoftTargetCrossEntropy

from camkit import CAMExtractor, CAMMaskingTTA, ContrastivePatchLoss, SnapMix


def report(name: str, ok: bool, details: str) -> None:
    print(f"CHECK {name}: {'PASS' if ok else 'FAIL'} {details}", flush=True)


def make_steps(model, ext, mix, cpe, opt):
    ce, soft_ce = torch.nn.CrossEntropyLoss(), SoftTargetCrossEntropy()

    def plain(x, y):
        loss = ce(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def with_cpe(x, y):
        out = ext(x, y)
        loss = ce(out.logits, y) + cpe(out.features, out.cams)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def with_snapmix(x, y):
        cams = ext.forward_frozen(x, y).cams
        xm, soft = mix(x, y, cams)
        loss = soft_ce(model(xm), soft)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def full(x, y):
        cams = ext.forward_frozen(x, y).cams
        xm, soft = mix(x, y, cams)
        out = ext(xm, soft.argmax(1))
        loss = soft_ce(out.logits, soft) + cpe(out.features, out.cams)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return {"plain": plain, "cpe": with_cpe, "snapmix": with_snapmix, "full": full}


def time_interleaved(steps, x, y, reps, autocast):
    times = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                step(x, y)
            torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--model", default="resnet50")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    dev = torch.device("cuda")
    print(
        f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
        f"timm {timm.__version__}"
    )
    torch.backends.cudnn.benchmark = True
    gen = torch.Generator(device=dev).manual_seed(0)

    # 1. exact CAM identity on CUDA, bf16 finiteness
    model = timm.create_model(args.model, pretrained=False, num_classes=2).to(dev).eval()
    ext = CAMExtractor(model)
    x = torch.randn(8, 3, args.img_size, args.img_size, device=dev, generator=gen)
    y = torch.randint(0, 2, (8,), device=dev, generator=gen)
    with torch.no_grad():
        out = ext(x, y)
        logits = model(x)
        recon = out.cams.mean((1, 2)) + model.get_classifier().bias[y]
        err = (recon - logits.gather(1, y[:, None])[:, 0]).abs().max().item()
        same = (out.logits - logits).abs().max().item()
    report(
        "exact_cam_fp32",
        ext.exact and err < 1e-3 and same == 0.0,
        f"max |mean(cam)+b-logit|={err:.2e}",
    )
    model = model.to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out16 = ext(x.contiguous(memory_format=torch.channels_last), y)
    rel = ((out16.logits.float() - logits).abs().max() / logits.abs().max()).item()
    report(
        "bf16_channels_last",
        bool(torch.isfinite(out16.cams).all()) and rel < 0.1,
        f"rel logit err {rel:.3f}",
    )

    # 2. no host sync in a full training step
    model.train()
    mix = SnapMix(num_classes=2, generator=torch.Generator().manual_seed(0))  # host draws
    cpe = ContrastivePatchLoss()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    steps = make_steps(model, ext, mix, cpe, opt)
    xb = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=dev, generator=gen)
    xb = xb.contiguous(memory_format=torch.channels_last)
    yb = torch.randint(0, 2, (args.batch_size,), device=dev, generator=gen)
    for step in steps.values():  # warm-up (cudnn autotune, allocator)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            step(xb, yb)
    torch.cuda.synchronize()
    for name in ("cpe", "snapmix", "full"):
        torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                steps[name](xb, yb)
            ok, detail = True, "no synchronising call"
        except RuntimeError as exc:
            ok, detail = False, str(exc).splitlines()[0][:200]
        finally:
            torch.cuda.set_sync_debug_mode(0)
        report(f"no_host_sync_{name}", ok, detail)
    torch.cuda.synchronize()

    # 5. step-time ratios, interleaved
    times = time_interleaved(steps, xb, yb, args.reps, autocast=True)
    base = times["plain"]
    for name in ("cpe", "snapmix", "full"):
        ratio = statistics.median(t / b for t, b in zip(times[name], base, strict=True))
        print(
            f"RATIO step_{name}_vs_plain: {ratio:.3f}  "
            f"(plain median {statistics.median(base) * 1e3:.1f} ms)"
        )

    # 3. torch.compile of the extractor inside the full step
    try:
        compiled_ext = CAMExtractor(model)
        compiled_ext.forward = torch.compile(compiled_ext.forward)
        compiled_steps = make_steps(model, compiled_ext, mix, cpe, opt)
        for _ in range(3):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                compiled_steps["full"](xb, yb)
        t_c = time_interleaved(
            {"eager": steps["full"], "compiled": compiled_steps["full"]}, xb, yb, args.reps, True
        )
        ratio = statistics.median(c / e for c, e in zip(t_c["compiled"], t_c["eager"], strict=True))
        report("torch_compile_full_step", True, f"compiled/eager time ratio {ratio:.3f}")
    except Exception as exc:  # report, do not hide
        report("torch_compile_full_step", False, f"{type(exc).__name__}: {str(exc)[:300]}")

    # 4. TTA on CUDA
    model.eval()
    xt = torch.randn(32, 3, args.img_size, args.img_size, device=dev, generator=gen)
    tta = {
        "early": CAMMaskingTTA(model, theta=0.5),
        "full": CAMMaskingTTA(model, theta=0.5, early_exit=False),
    }
    tta_times: dict[str, list[float]] = {name: [] for name in tta}
    results = {}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for rep in range(4):  # the first round warms up (cuDNN autotuning of each batch shape)
            for name, wrapper in tta.items():
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                results[name] = wrapper.predict(xt)
                torch.cuda.synchronize()
                if rep:
                    tta_times[name].append(time.perf_counter() - t0)
    fast, full_vote = results["early"], results["full"]
    ratio = statistics.median(
        f / e for f, e in zip(tta_times["full"], tta_times["early"], strict=True)
    )
    same = torch.equal(fast.labels, full_vote.labels)
    report(
        "tta_early_exit_cuda",
        same,
        f"labels identical={same}, forwards/image {fast.forwards.float().mean():.1f} vs "
        f"{full_vote.forwards.float().mean():.1f}, "
        f"time ratio full/early {ratio:.2f} (median of 3 after a warm-up round)",
    )
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
