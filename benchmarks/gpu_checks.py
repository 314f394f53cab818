"""CUDA checks for camkit, run by ``benchmarks/gpu_check.sh`` on a GPU machine.

Each check prints one line ``CHECK <name>: PASS|FAIL <details>``; timings print as ratios measured
side by side. Checks:

1. exact CAM identity on CUDA in float32 (resnet50) and finiteness under bf16 autocast +
   channels_last;
2. no host synchronisation in a full training step (frozen CAM pass → SnapMix → one forward with
   CAMs → SnapMix CE + CPE → backward → SGD step), with ``torch.cuda.set_sync_debug_mode("error")``;
3. ``torch.compile(TrainStep)``: graph count, and its time against the eager step and the plain
   step (resnet50 224² batch 64 and resnet18 112² batch 32, bf16, channels_last);
4. CAM-masking TTA on CUDA: early exit gives the full vote's labels with fewer forwards;
5. step-time ratios (plain, +CPE, +SnapMix, full) at resnet50 224² batch 64, bf16, channels_last.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
import torch._dynamo

from camkit import CAMExtractor, CAMMaskingTTA, ContrastivePatchLoss, SnapMix, TrainStep


def report(name: str, ok: bool, details: str) -> None:
    print(f"CHECK {name}: {'PASS' if ok else 'FAIL'} {details}", flush=True)


def make_steps(model, mix, cpe, opt, compile_step=False):
    """The plain step and the camkit steps (``TrainStep``), each with its optimiser update."""
    ce = torch.nn.CrossEntropyLoss()

    def update(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def plain(x, y):
        return update(ce(model(x), y))

    modules = {
        "cpe": TrainStep(model, cpe=cpe),
        "snapmix": TrainStep(model, mix=mix),
        "full": TrainStep(model, mix=mix, cpe=cpe),
    }
    if compile_step:
        modules = {name: torch.compile(step) for name, step in modules.items()}
    steps = {"plain": plain}
    for name, module in modules.items():
        steps[name] = lambda x, y, module=module: update(module(x, y).loss)
    return steps


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
    cpe = ContrastivePatchLoss(normalize=False, temperature=1.0)  # the paper's Eq. 1
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    steps = make_steps(model, mix, cpe, opt)
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

    # 3. torch.compile(TrainStep) against eager, at this size and at resnet18 112² batch 32
    compile_configs = [(model, xb, yb, f"{args.model}_{args.img_size}px_b{args.batch_size}")]
    small = timm.create_model("resnet18", pretrained=False, num_classes=2).to(dev).train()
    small = small.to(memory_format=torch.channels_last)
    xs = torch.randn(32, 3, 112, 112, device=dev, generator=gen)
    xs = xs.contiguous(memory_format=torch.channels_last)
    ys = torch.randint(0, 2, (32,), device=dev, generator=gen)
    compile_configs.append((small, xs, ys, "resnet18_112px_b32"))
    for net, xc, yc, tag in compile_configs:
        try:
            torch._dynamo.reset()
            net_opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
            eager = make_steps(net, mix, cpe, net_opt)
            compiled = make_steps(net, mix, cpe, net_opt, compile_step=True)
            explanation = torch._dynamo.explain(TrainStep(net, mix=mix, cpe=cpe))(xc, yc)
            for _ in range(3):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    compiled["full"](xc, yc)
                    eager["full"](xc, yc)
            runs = {"plain": eager["plain"], "eager": eager["full"], "compiled": compiled["full"]}
            t_c = time_interleaved(runs, xc, yc, args.reps, True)
            pairs = zip(t_c["compiled"], t_c["eager"], strict=True)
            ratio = statistics.median(c / e for c, e in pairs)
            vs_plain = statistics.median(
                c / p for c, p in zip(t_c["compiled"], t_c["plain"], strict=True)
            )
            eager_vs_plain = statistics.median(
                e / p for e, p in zip(t_c["eager"], t_c["plain"], strict=True)
            )
            report(
                f"torch_compile_train_step_{tag}",
                explanation.graph_count > 0,
                f"graphs {explanation.graph_count}, breaks {explanation.graph_break_count}; "
                f"compiled/eager {ratio:.3f}; full step / plain: eager {eager_vs_plain:.3f}, "
                f"compiled {vs_plain:.3f}",
            )
        except Exception as exc:  # report, do not hide
            report(f"torch_compile_train_step_{tag}", False, f"{type(exc).__name__}: {exc!s:.300}")

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
