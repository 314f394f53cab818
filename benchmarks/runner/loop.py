"""The one training loop and the evaluation of a run (timm's ``train.py`` is the model).

`train` trains (or resumes) one run: the data resident on the device, a `camkit.TrainStep` built by
the method, SGD with the recipe's schedule, an atomic checkpoint after every epoch (running the
same command again continues it; other settings are refused), the epoch chosen on the validation
split (or the last), and a stop with a message when the loss or, after an epoch, a weight is not
finite. `evaluate_run` gives the result rows of a
trained run: the metrics on every test set, the validation accuracy, with the CAM-masking TTA for
the methods that use it, the vote-rule study and the deletion AUC where the recipe asks.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch

import camkit
from benchmarks.runner.cams import body_mask, body_share
from benchmarks.runner.data import Data
from benchmarks.runner.io import atomic_save, load_checkpoint
from benchmarks.runner.methods import METHODS, build_step, training_name
from benchmarks.runner.models import (
    create_model,
    library_versions,
    make_optimizer,
    onecycle,
    step_lr_scale,
    tta_geometry,
)
from benchmarks.runner.recipes import RunConfig
from camkit import CAMMaskingTTA, classification_metrics, deletion_auc, evaluate

Log = Callable[[str], None]
RULES = ("threshold", "argmax", "relative")
# what changes a model but not its evaluation: a checkpoint is resumed only when these agree
EVALUATION_ONLY = (
    "eval_batch_size",
    "tta_k",
    "tta_theta",
    "tta_relative_theta",
    "tta_rule",
    "tta_images",
    "deletion_images",
    "epochs",
)
EPOCH_SEED, MIX_SEED_OFFSET = 1_000_003, 500_000


def checkpoint_path(cfg: RunConfig) -> Path:
    return Path(cfg.out) / f"{cfg.dataset}_{training_name(cfg.method)}_seed{cfg.seed}.pt"


def selected_weights(cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The weights a finished run reports: the epoch chosen on validation, else the last one."""
    path = checkpoint_path(cfg)
    ckpt = load_checkpoint(path, required=("model", "best_state", "epoch", "epochs"))
    if ckpt["epoch"] < ckpt["epochs"]:
        raise ValueError(
            f"{path}: the run stopped at epoch {ckpt['epoch']} of {ckpt['epochs']}; run the same "
            "command again to finish it before reading its weights"
        )
    return ckpt["best_state"] if ckpt["best_state"] is not None else ckpt["model"]


def _weights_id(path: str | None) -> str | None:
    """A weights file as its name and content hash, so that rows agree across machines."""
    if path in (None, "timm"):
        return path
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return f"{Path(path).name} sha256:{digest}"


def run_settings(cfg: RunConfig) -> dict[str, Any]:
    """Everything that changes a number of this run's rows (recorded with each row)."""
    settings = cfg.recipe.settings()
    settings["pretrained"] = _weights_id(cfg.recipe.pretrained)
    settings.update(METHODS[cfg.method].settings())
    settings.update(
        train_dataset=cfg.dataset,
        torch=str(torch.__version__),
        timm=str(timm.__version__),
        camkit=camkit.__version__,
    )
    settings.update(library_versions(cfg.recipe))  # MONAI's networks: its version
    return settings


def _training_settings(cfg: RunConfig) -> dict[str, Any]:
    settings = run_settings(cfg)
    settings.update(METHODS[training_name(cfg.method)].settings())
    return {k: v for k, v in settings.items() if k not in EVALUATION_ONLY}


def _batches(order: torch.Tensor, batch_size: int, drop_last: bool) -> list[torch.Tensor]:
    n = order.shape[0]
    if drop_last:
        return [order[i * batch_size : (i + 1) * batch_size] for i in range(n // batch_size)]
    chunks = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return [idx for idx in chunks if len(idx) >= 2]  # BatchNorm needs two images


def _steps_per_epoch(n: int, recipe) -> int:
    if recipe.drop_last:
        return n // recipe.batch_size
    full, rest = divmod(n, recipe.batch_size)
    return full + (rest >= 2)


def require_checkpoint(cfg: RunConfig) -> Path:
    """The run's checkpoint path, for ``--reevaluate`` (no training): refused when missing
    (a run of 0 epochs has none: it trains nothing anyway)."""
    path = checkpoint_path(cfg)
    if cfg.recipe.epochs > 0 and not path.is_file():
        raise FileNotFoundError(
            f"--reevaluate: {cfg.dataset} {cfg.method} seed {cfg.seed} has no checkpoint at "
            f"{path}; train it first (the same command without --reevaluate)"
        )
    return path


def _not_finite(model: torch.nn.Module) -> list[str]:
    """The names of the model's floating tensors that hold a NaN or infinity (one host sync)."""
    state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    finite = torch.stack([torch.isfinite(v).all() for v in state.values()])
    if bool(finite.all()):
        return []
    return [name for name, ok in zip(state, finite.tolist(), strict=True) if not ok]


def train(
    cfg: RunConfig,
    data: Data,
    device: torch.device,
    log: Log,
    *,
    resume: bool = True,
    no_training: bool = False,
) -> dict[str, Any]:
    """Train (or resume) one run; return its selected weights and what the rows report.

    ``no_training``: only read a finished run's checkpoint (``--reevaluate``); a missing or
    unfinished checkpoint is refused rather than trained.
    """
    recipe, seed = cfg.recipe, cfg.seed
    path = checkpoint_path(cfg)
    config = _training_settings(cfg) | {"seed": seed}
    images, labels = data.train
    name = f"{cfg.dataset} {cfg.method} seed {seed}"
    if no_training:
        require_checkpoint(cfg)
    if recipe.epochs > 0 and _steps_per_epoch(labels.shape[0], recipe) == 0:
        rule = "the last short batch is dropped" if recipe.drop_last else "a batch needs 2 images"
        raise ValueError(
            f"--batch-size {recipe.batch_size}: {labels.shape[0]} training images give no "
            f"training step per epoch ({rule}); use a smaller --batch-size or more images"
        )

    torch.manual_seed(seed)
    model = create_model(recipe, data.num_classes, device)
    if recipe.seeding == "epoch":  # mix draws and batch order from one generator, reseeded
        mix_gen = order_gen = torch.Generator()
    else:  # one stream per run: the mix's and the order's generators, both seeded once
        mix_gen = torch.Generator().manual_seed(seed)
        order_gen = torch.Generator().manual_seed(seed)
    step = build_step(training_name(cfg.method), model, data.num_classes, mix_gen, recipe)
    optimizer = make_optimizer(model, recipe)
    per_epoch = _steps_per_epoch(labels.shape[0], recipe)
    scheduler = onecycle(optimizer, recipe, per_epoch) if recipe.schedule == "onecycle" else None

    run = {"epoch": 0, "best_val": -1.0, "best_epoch": 0, "best_state": None, "train_seconds": 0.0}
    run["losses"] = []
    if path.is_file() and resume:
        ckpt = load_checkpoint(path, required=("config", "model", "optimizer", *run))
        differs = {k: (ckpt["config"].get(k), v) for k, v in config.items()}
        differs = {k: pair for k, pair in differs.items() if pair[0] != pair[1]}
        if differs:
            raise ValueError(
                f"{path}: this run's checkpoint was written with other settings (checkpoint, "
                f"now): {differs}; use another --out, or --overwrite to train it again from "
                "scratch"
            )
        if ckpt["epoch"] > recipe.epochs:
            raise ValueError(
                f"{path}: this run's checkpoint has trained {ckpt['epoch']} epochs, more than "
                f"--epochs {recipe.epochs}; ask for at least {ckpt['epoch']} epochs, or "
                "--overwrite to train it again from scratch"
            )
        if scheduler is not None and ckpt["epoch"] not in (0, recipe.epochs):
            if ckpt.get("epochs") != recipe.epochs:
                raise ValueError(
                    f"{path}: this run's checkpoint follows a one-cycle schedule over "
                    f"{ckpt.get('epochs')} epochs; it cannot be stretched to {recipe.epochs} "
                    "(ask for those epochs, or --overwrite)"
                )
        model.load_state_dict(ckpt["model"])
        base_lrs = [group["base_lr"] for group in optimizer.param_groups]
        optimizer.load_state_dict(ckpt["optimizer"])  # its groups replace ours: keep our base_lr
        for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["base_lr"] = base_lr
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if recipe.seeding == "stream" and "rng" in ckpt:
            torch.set_rng_state(ckpt["rng"]["torch"])
            mix_gen.set_state(ckpt["rng"]["mix"])
            order_gen.set_state(ckpt["rng"]["order"])
        run = {key: ckpt[key] for key in run}
        run["val_curve"] = list(ckpt.get("val_curve", []))  # absent from older checkpoints
        log(f"  resuming {path.name} from epoch {run['epoch']}/{recipe.epochs}")
    if no_training and run["epoch"] < recipe.epochs:
        raise ValueError(
            f"--reevaluate: {path} stopped at epoch {run['epoch']} of {recipe.epochs}; finish "
            "it first (the same command without --reevaluate)"
        )

    run.setdefault("val_curve", [])  # validation accuracy after each epoch, in percent
    for epoch in range(run["epoch"], recipe.epochs):
        if recipe.seeding == "epoch":
            torch.manual_seed(seed * EPOCH_SEED + epoch)  # the augmentation's draws
            mix_gen.manual_seed(seed * EPOCH_SEED + epoch + MIX_SEED_OFFSET)
        if scheduler is None:
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * step_lr_scale(epoch, recipe.epochs)
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(labels.shape[0], generator=order_gen).to(device)
        batches = _batches(order, recipe.batch_size, recipe.drop_last)
        loss_sum = torch.zeros((), device=device)
        for i, idx in enumerate(batches, 1):
            x = data.augment(images[idx])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = step(x, labels[idx]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach()
            if i % 10 == 0 or i == len(batches):  # the only host syncs of the loop
                mean_loss = (loss_sum / i).item()
                if not math.isfinite(mean_loss):
                    kept = f"{path} keeps epoch {run['epoch']}" if run["epoch"] else ""
                    raise SystemExit(
                        f"{cfg.dataset} {cfg.method} seed {seed}: the training loss is "
                        f"{mean_loss} at epoch {epoch + 1}, step {i}; stopped, "
                        f"{kept or 'no checkpoint was written'}. Lower --lr (now "
                        f"{recipe.lr:g}) or check the data"
                    )
        broken = _not_finite(model)  # the last steps' update: a NaN gradient, a finite loss
        if broken:
            kept = f"{path} keeps epoch {run['epoch']}" if run["epoch"] else ""
            raise SystemExit(
                f"{name}: {len(broken)} weight tensors are not finite after epoch {epoch + 1} "
                f"({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}), the training "
                f"loss being finite; stopped, {kept or 'no checkpoint was written'}. Lower --lr "
                f"(now {recipe.lr:g}) or check the data"
            )
        run["losses"] = [*run["losses"], float(loss_sum) / max(1, len(batches))]
        run["train_seconds"] += time.perf_counter() - t0
        line = f"epoch {epoch + 1}/{recipe.epochs} loss {run['losses'][-1]:.4f}"
        if recipe.selection == "val" and data.val is not None:
            model.eval()
            acc = plain_metrics(cfg, data, model, *data.val)["accuracy"]
            run["val_curve"] = [*run["val_curve"], 100 * acc]
            if acc > run["best_val"]:
                state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                run.update(best_val=acc, best_epoch=epoch + 1, best_state=state)
            line += (
                f" val acc {100 * acc:.2f} (best {100 * run['best_val']:.2f} @ {run['best_epoch']})"
            )
        run["epoch"] = epoch + 1
        ckpt = {**run, "config": config, "epochs": recipe.epochs, "model": model.state_dict()}
        ckpt.update(optimizer=optimizer.state_dict())
        ckpt["scheduler"] = scheduler.state_dict() if scheduler is not None else None
        if recipe.seeding == "stream":
            ckpt["rng"] = {
                "torch": torch.get_rng_state(),
                "mix": mix_gen.get_state(),
                "order": order_gen.get_state(),
            }
        atomic_save(ckpt, path)
        log(f"  {line} ({time.perf_counter() - t0:.1f}s)")
    if run["best_state"] is None:  # last-epoch selection, no validation split, or 0 epochs
        run["best_state"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        run["best_epoch"] = recipe.epochs
    return {**run, "epochs": recipe.epochs}


def plain_metrics(cfg: RunConfig, data: Data, model, images, labels, tta=None) -> dict:
    metrics = classification_metrics(
        data.num_classes, positive_class=data.positive, class_names=list(data.class_names)
    )
    values = evaluate(
        model,
        images,
        labels,
        metrics,
        batch_size=cfg.recipe.eval_batch_size or cfg.recipe.batch_size,
        transform=data.to_input,
        tta=tta,
        amp=images.is_cuda,
    )
    if data.positive is None:  # macro precision/recall/F1 over the classes
        names = data.class_names
        p = [values[f"ppv_{c}"] for c in names]
        r = [values[f"sensitivity_{c}"] for c in names]
        f1 = [2 * a * b / (a + b) if a + b > 0 else 0.0 for a, b in zip(p, r, strict=True)]
        values.update(precision=sum(p) / len(p), recall=sum(r) / len(r), f1=sum(f1) / len(f1))
    return values


def make_tta(cfg: RunConfig, model, rule: str | None = None) -> CAMMaskingTTA:
    recipe = cfg.recipe
    patch, _, k = tta_geometry(recipe.img_size, recipe.tta_k)
    rule = rule or recipe.tta_rule
    theta = recipe.tta_relative_theta if rule == "relative" else recipe.tta_theta
    return CAMMaskingTTA(model, k=k, theta=theta, patch_size=patch, rule=rule)


def vote_rules(cfg: RunConfig, data: Data, model, split) -> dict[str, dict]:
    """Each vote rule's flips and accuracy change on the first ``tta_images`` images."""
    images, labels = split
    n = (
        labels.shape[0]
        if cfg.recipe.tta_images is None
        else min(cfg.recipe.tta_images, labels.shape[0])
    )
    images, labels = images[:n], labels[:n]
    plain = plain_metrics(cfg, data, model, images, labels)["accuracy"]
    out = {}
    for rule in RULES:
        values = plain_metrics(cfg, data, model, images, labels, tta=make_tta(cfg, model, rule))
        out[rule] = {
            "n": int(n),
            "flips": values["tta_flipped"],
            "accuracy_change": values["accuracy"] - plain,
        }
    return out


def deletion(cfg: RunConfig, data: Data, model, split) -> float:
    """Mean deletion AUC of the CAM (lower: the CAM points at what the model uses)."""
    images = data.to_input(split[0][: cfg.recipe.deletion_images])
    patch, _, k = tta_geometry(cfg.recipe.img_size, cfg.recipe.tta_k)
    tta = CAMMaskingTTA(model, k=k, patch_size=patch, early_exit=False)
    aucs = [deletion_auc(tta.predict(images[i : i + 128])) for i in range(0, len(images), 128)]
    return float(torch.cat(aucs).mean())


def evaluate_run(
    cfg: RunConfig, data: Data, run: dict, device: torch.device, *, vote_study: bool = False
) -> list[dict[str, Any]]:
    """The result rows of a trained run: one per test set."""
    method = METHODS[cfg.method]
    model = create_model(cfg.recipe, data.num_classes, device, state=run["best_state"]).eval()
    settings = run_settings(cfg)
    val_acc, val_rules = None, None
    if data.val is not None:
        val_acc = 100 * plain_metrics(cfg, data, model, *data.val)["accuracy"]
        if vote_study:
            val_rules = vote_rules(cfg, data, model, data.val)
    rows = []
    for index, (name, split) in enumerate(data.tests.items()):
        tta = make_tta(cfg, model) if method.tta else None
        values = plain_metrics(cfg, data, model, *split, tta=tta)
        row: dict[str, Any] = {"dataset": name, "method": cfg.method, "seed": cfg.seed}
        row["settings"] = settings
        row.update(acc=100 * values["accuracy"])
        row.update({k: 100 * values[k] for k in ("precision", "recall", "f1")})
        if data.positive is None and data.num_classes <= 3:  # COVIDx-CT: per-class values too
            row.update(
                {k: 100 * v for k, v in values.items() if k.startswith(("sensitivity_", "ppv_"))}
            )
        row.update(n_test=int(split[1].shape[0]), train_seconds=run["train_seconds"])
        row.update(epochs=run["epochs"], best_epoch=run["best_epoch"], train_losses=run["losses"])
        if val_acc is not None:
            row["val_acc"] = val_acc
        if run.get("val_curve"):
            row["val_curve"] = run["val_curve"]
        if tta is not None:
            row.update(tta_forwards=values["tta_forwards"], tta_flipped=values["tta_flipped"])
        if vote_study and not method.tta:
            test_rules = vote_rules(cfg, data, model, split)
            row["tta_rules"] = {
                rule: {"val": (val_rules or {}).get(rule), "test": test_rules[rule]}
                for rule in RULES
            }
        if index == 0 and cfg.recipe.deletion_images > 0:
            row["deletion_auc"] = deletion(cfg, data, model, split)
        if data.info.get("body_share"):  # CT slices: where the CAMs sit, and an even map's share
            row["cam_body_share"] = 100 * float(body_share(model, data, split[0]).mean())
            row["body_area"] = 100 * float(body_mask(split[0]).float().mean())
        rows.append(row)
    return rows
