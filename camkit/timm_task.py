"""camkit's training step as a ``timm.task`` training task, for timm's own ``train.py``.

``train.py`` builds its step from a ``timm.task.TrainingTask`` and drives everything through it:
the optimiser is built on ``task.get_trainable_module()``, ``compile()`` and
``prepare_distributed()`` wrap what trains, validation runs ``get_eval_model()``, the saver
stores ``get_checkpoint_state()``. [`TrainStepTask`][camkit.TrainStepTask] plugs
[`camkit.TrainStep`][camkit.TrainStep] into that contract (any camkit mix, the contrastive patch
loss; the three-line change is on the page "timm train.py"); ``SnapMixTask`` is its deprecated
name. Optional: ``import camkit`` does not import it (nor ``timm.task``); it needs timm 1.0.27+,
the first ``TrainingTask`` with ``compile``, ``get_eval_model``, ``setup_ema`` and
``get_checkpoint_state``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import timm
import torch
from torch import nn

from camkit._timm_step import TimmTrainStep
from camkit.losses import ContrastivePatchLoss
from camkit.mix import Mix, SnapMix
from camkit.models import eval_module
from camkit.models._resolve import resolve
from camkit.train import SoftCriterion, TrainStep

_NEEDED = ("get_eval_model", "setup_ema", "update_ema", "get_checkpoint_state")
try:  # timm < 1.0.23 has no timm.task; 1.0.23 - 1.0.26 lack the methods below
    from timm.task import TrainingTask

    if not all(hasattr(TrainingTask, name) for name in _NEEDED):
        raise ImportError(f"timm.task.TrainingTask lacks one of {', '.join(_NEEDED)}")
except ImportError as err:
    raise ImportError(
        f"camkit.timm_task needs timm >= 1.0.27 (timm.task.TrainingTask with "
        f"{', '.join(_NEEDED)}), found timm {timm.__version__}: pip install 'timm>=1.0.27'"
    ) from err

__all__ = ["SnapMixTask", "TrainStepTask"]

_logger = logging.getLogger(__name__)


class TrainStepTask(TrainingTask):
    """A timm training task that trains with camkit's step: a mix, CE, CPE.

    ``task(input, target)`` runs [`camkit.TrainStep`][camkit.TrainStep] (the mix with its CAM
    pass, one training forward, soft-target cross-entropy, contrastive patch loss) and returns
    timm's result dict. The task holds the step as its ``trainable_module``, so everything that
    trains wraps the step, never the model alone:

    - ``prepare_distributed()`` wraps the step in ``DistributedDataParallel`` (camkit's DDP
      recipe: the training forward runs inside DDP's, every rank stays in sync);
    - ``compile()`` compiles the step for training and the plain model for evaluation;
    - ``no_sync()`` (gradient accumulation) is the DDP step's.

    Everything that evaluates or saves sees the plain classifier: ``get_eval_model()`` is the
    model (or its compiled form), ``setup_ema()`` keeps an EMA of the model, and
    ``get_checkpoint_state()`` stores ``model.state_dict()`` under the usual keys, so timm's
    ``validate``, checkpoint saver, resume and ``timm.create_model(checkpoint_path=...)`` work
    unchanged.

    Targets must be int class labels ``(B,)``: the task's mix mixes the batch itself. timm's
    Mixup/CutMix (``train.py --mixup/--cutmix/--cutmix-minmax``) hands the task soft ``(B, K)``
    targets instead, which are refused with a ``ValueError``: pass ``mix=camkit.CutMix(K)`` or
    ``camkit.Mixup(K)`` (equal to timm's on the same draws) instead.

    Args:
        model: a timm classifier, or any model camkit reads through `camkit.models`
            (torchvision, MONAI, Hugging Face), unwrapped (not DDP, not compiled). Evaluation
            (``get_eval_model``) sees the model itself, or, where its forward returns no tensor
            (Hugging Face outputs), its adapter, whose forward returns the logits.
        mix: a [`camkit.Mix`][camkit.Mix] (SnapMix, CutMix, Mixup, ...), or ``None``.
        cpe: the [`camkit.ContrastivePatchLoss`][camkit.ContrastivePatchLoss], or ``None``
            (``ContrastivePatchLoss.paper()``: the paper's Eq. 1).
        cam_method: the CAM method of the step (see [`TrainStep`][camkit.TrainStep]).
        criterion: ``criterion(logits, soft_targets) -> scalar`` (default: soft-target
            cross-entropy, timm's ``SoftTargetCrossEntropy``). timm's hard-label criteria
            (``LabelSmoothingCrossEntropy``) do not accept the soft targets; use
            ``label_smoothing`` instead.
        cpe_weight: weight ``λ ≥ 0`` of the CPE term.
        label_smoothing: ``ε`` in ``[0, 1)`` applied to the targets (``train.py --smoothing``).
        device: device for task tensors (as ``ClassificationTask``; default CPU).
        dtype: dtype for task tensors (as ``ClassificationTask``; default torch's).
        verbose: log the configuration (as ``ClassificationTask``).

    Attributes:
        step: the unwrapped [`camkit.TrainStep`][camkit.TrainStep] (``trainable_module`` may be its
            DDP or compiled wrapper).
        model: the plain model being trained (the user's, also for adapted families).

    Raises:
        TypeError: ``model`` is already DDP/DataParallel/compiled, or an argument has the wrong
            type.
        ValueError: ``mix.num_classes`` differs from the model's, or an argument is out of
            range.

    Examples:
        >>> import timm, torch
        >>> from camkit import ContrastivePatchLoss, SnapMix
        >>> from camkit.timm_task import TrainStepTask
        >>> model = timm.create_model("resnet18", pretrained=False, num_classes=2)
        >>> task = TrainStepTask(model, mix=SnapMix(2), cpe=ContrastivePatchLoss(), verbose=False)
        >>> result = task(torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 1, 0]))
        >>> result["loss"].backward()
        >>> sorted(result)
        ['classification_loss', 'cpe_loss', 'loss', 'output', 'targets']
        >>> task.get_eval_model() is model
        True
    """

    def __init__(
        self,
        model: nn.Module,
        mix: Mix | None = None,
        cpe: ContrastivePatchLoss | None = None,
        *,
        cam_method: str = "cam",
        criterion: SoftCriterion | None = None,
        cpe_weight: float = 1.0,
        label_smoothing: float = 0.0,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        verbose: bool = True,
    ) -> None:
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        step = TimmTrainStep(
            model,
            mix=mix,
            cpe=cpe,
            cam_method=cam_method,
            criterion=criterion,
            cpe_weight=cpe_weight,
            label_smoothing=label_smoothing,
        )
        self.trainable_module = step
        # kept outside the module tree: ``trainable_module`` already holds it (maybe wrapped)
        object.__setattr__(self, "_step", step)
        if self.verbose:
            _logger.info(f"{type(self).__name__}: mix={mix!r}, cpe={cpe!r}, {step.extra_repr()}")

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        *,
        alpha: float = 1.0,
        prob: float = 1.0,
        cpe: ContrastivePatchLoss | bool = True,
        cpe_weight: float = 1.0,
        label_smoothing: float = 0.0,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        verbose: bool = True,
    ) -> TrainStepTask:
        """SnapMix and CPE for ``model``: ``SnapMix(model.num_classes, alpha, prob)``, the CPE.

        The one-line replacement for ``ClassificationTask(model=model, ...)`` in ``train.py``.

        Args:
            model: a timm classifier with an int ``num_classes`` (every timm model has one), or
                a model whose adapter gives one (`camkit.models`).
            alpha: SnapMix Beta parameter α (paper: 1).
            prob: probability of mixing a batch (paper: 1).
            cpe: ``True`` for ``ContrastivePatchLoss()`` (camkit's one default, the L2-normalised
                form with τ = 0.1 chosen on validation data), a ``ContrastivePatchLoss`` to use
                (``ContrastivePatchLoss.paper()``: the paper's Eq. 1, which with SnapMix is the
                paper's recipe), or ``False``.
            cpe_weight: weight ``λ`` of the CPE term (paper: 1).
            label_smoothing: ``ε`` in ``[0, 1)`` (``train.py --smoothing``).
            device: as for the constructor.
            dtype: as for the constructor.
            verbose: as for the constructor.

        Returns:
            The task.

        Raises:
            ValueError: ``model`` has no positive int ``num_classes``.
            TypeError: ``cpe`` is neither a bool nor a ``ContrastivePatchLoss``.

        Examples:
            >>> import timm
            >>> from camkit.timm_task import TrainStepTask
            >>> model = timm.create_model("resnet18", pretrained=False, num_classes=3)
            >>> TrainStepTask.from_model(model, verbose=False).step.num_classes
            3
        """
        num_classes = getattr(resolve(model, required=False), "num_classes", None)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"model: expected a classifier with a positive int num_classes attribute (a timm "
                f"model), got {type(model).__name__} with num_classes={num_classes!r}"
            )
        if isinstance(cpe, bool):
            cpe = ContrastivePatchLoss() if cpe else None
        elif not isinstance(cpe, ContrastivePatchLoss):
            raise TypeError(
                f"cpe: expected a bool or a camkit.ContrastivePatchLoss, got {type(cpe).__name__}"
            )
        return cls(
            model,
            mix=SnapMix(num_classes, alpha=alpha, prob=prob),
            cpe=cpe,
            cpe_weight=cpe_weight,
            label_smoothing=label_smoothing,
            device=device,
            dtype=dtype,
            verbose=verbose,
        )

    @property
    def step(self) -> TrainStep:
        """The unwrapped training step (``trainable_module`` may wrap it)."""
        return self._step

    @property
    def model(self) -> nn.Module:
        """The plain model being trained."""
        return self._step.model

    def prepare_distributed(
        self, device_ids: list | None = None, **ddp_kwargs: Any
    ) -> TrainStepTask:
        """Wrap the training step (not the model) in ``DistributedDataParallel``.

        Call it once, after `compile` if you compile (as ``train.py`` does). CPU
        ``device_ids`` (``train.py --device cpu`` passes ``[torch.device("cpu")]``) are dropped,
        since DDP takes none for CPU modules, so gloo runs on CPU work.

        Args:
            device_ids: ``device_ids`` of DDP (e.g. ``[local_rank]``).
            **ddp_kwargs: further ``DistributedDataParallel`` arguments (``broadcast_buffers``).

        Returns:
            ``self``, for chaining.

        Raises:
            RuntimeError: the step is already wrapped in DDP.
        """
        from torch.nn.parallel import DistributedDataParallel as DDP

        if isinstance(self.trainable_module, DDP):
            raise RuntimeError(
                "prepare_distributed: expected an unwrapped training step, got one already "
                "wrapped in DistributedDataParallel; call prepare_distributed() once"
            )
        if device_ids is not None and all(torch.device(d).type == "cpu" for d in device_ids):
            device_ids = None
        self.trainable_module = DDP(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        return self

    def compile(
        self, backend: str = "inductor", mode: str | None = None, **compile_kwargs: Any
    ) -> nn.Module:
        """``torch.compile`` the training step (training) and the plain model (evaluation).

        Call it before `prepare_distributed`, as ``train.py`` does.

        Args:
            backend: ``torch.compile`` backend.
            mode: ``torch.compile`` mode.
            **compile_kwargs: further ``torch.compile`` arguments.

        Returns:
            The compiled eval model (``get_eval_model()``): ``model(x)`` gives the logits.

        Raises:
            RuntimeError: called after `prepare_distributed`.
        """
        from torch.nn.parallel import DistributedDataParallel as DDP

        if isinstance(self.trainable_module, DDP):
            raise RuntimeError(
                "compile: expected to run before prepare_distributed(), got a training step "
                "already wrapped in DistributedDataParallel; compile first, as train.py does"
            )
        options = dict(backend=backend, mode=mode, **compile_kwargs)
        self.trainable_module = torch.compile(self.trainable_module, **options)
        self.eval_model = torch.compile(eval_module(self.model), **options)
        return self.eval_model

    def get_eval_model(
        self, module: nn.Module | None = None, ema: bool = False
    ) -> nn.Module | None:
        """The classifier to validate: the model (or its compiled form), or its EMA.

        Args:
            module: returned as it is when given (timm's convention).
            ema: the EMA model instead (``None`` before `setup_ema`).

        Returns:
            A module whose ``forward(x)`` gives the logits; `timm.utils.unwrap_model`
            of it has the model's ``state_dict`` keys.
        """
        if module is not None:
            return module
        if ema:
            compiled = getattr(self, "eval_model_ema", None)
            return compiled if compiled is not None else self.get_trainable_module(ema=True)
        compiled = getattr(self, "eval_model", None)
        return compiled if compiled is not None else eval_module(self.model)

    def setup_ema(
        self,
        decay: float = 0.9999,
        use_warmup: bool = False,
        device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> nn.Module:
        """Keep an EMA of the plain model (timm's ``ModelEmaV3``, same arguments), not of the step.

        Returns:
            The ``ModelEmaV3``; its ``.module`` is a copy of the model.
        """
        from timm.utils.model_ema import ModelEmaV3

        self.trainable_module_ema = ModelEmaV3(
            self.model, decay=decay, use_warmup=use_warmup, device=device, **kwargs
        )
        return self.trainable_module_ema

    def update_ema(self, step: int | None = None) -> None:
        """Move the EMA (if any) towards the model's weights; ``step``: the update count."""
        if self.has_ema():
            self.get_trainable_module(ema=True).update(self.model, step=step)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training step on ``input`` (B, C, H, W) and int labels ``target`` (B,).

        Args:
            input: the normalised image batch.
            target: int64 class indices; soft ``(B, K)`` targets (timm's mixup/cutmix) are
                refused.

        Returns:
            ``{"loss", "output", "targets", "classification_loss"}`` and, with CPE,
            ``"cpe_loss"``: the [`camkit.TrainStepOutput`][camkit.TrainStepOutput] fields,
            ``output`` being the training forward's logits.

        Raises:
            TypeError: ``input`` is not a tensor (e.g. NaFlex patch dicts).
            ValueError: ``target`` is not a ``(B,)`` integer tensor.
        """
        if not isinstance(input, torch.Tensor):
            raise TypeError(
                f"input: expected a (B, C, H, W) image tensor, got {type(input).__name__}; "
                "NaFlex patch dictionaries (train.py --naflex-loader) are not supported"
            )
        if not isinstance(target, torch.Tensor):
            raise TypeError(f"target: expected a (B,) int64 tensor, got {type(target).__name__}")
        if target.is_floating_point() or target.ndim != 1:
            raise ValueError(
                f"target: expected int class labels of shape (B,), got a {target.dtype} tensor of "
                f"shape {tuple(target.shape)}. Soft (B, K) targets come from timm's mixup/cutmix "
                "(train.py --mixup, --cutmix, --cutmix-minmax); the task's mix mixes the batch "
                "itself from the labels: disable timm's mixup/cutmix and pass "
                "mix=camkit.CutMix(K) or camkit.Mixup(K), equal to timm's on the same draws"
            )
        out = self.trainable_module(input, target)
        result = {
            "loss": out.loss,
            "output": out.logits,
            "targets": out.targets,
            "classification_loss": out.classification_loss,
        }
        if out.cpe_loss is not None:
            result["cpe_loss"] = out.cpe_loss
        return result


class SnapMixTask(TrainStepTask):
    """Deprecated name of [`TrainStepTask`][camkit.TrainStepTask] (kept for one release).

    Takes ``snapmix=`` (the mix) as before; use ``TrainStepTask(model, mix=...)``.

    Args:
        model: as for `TrainStepTask`.
        snapmix: the mix (any [`camkit.Mix`][camkit.Mix]).
        cpe: as for `TrainStepTask`.
        **kwargs: the other keyword arguments of `TrainStepTask`.
    """

    def __init__(
        self,
        model: nn.Module,
        snapmix: Mix | None = None,
        cpe: ContrastivePatchLoss | None = None,
        **kwargs: Any,
    ) -> None:
        message = "SnapMixTask is deprecated: use camkit.timm_task.TrainStepTask(model, mix=...)"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        super().__init__(model, kwargs.pop("mix", snapmix), cpe, **kwargs)
