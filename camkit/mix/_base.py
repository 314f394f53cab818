"""The mix protocol: what [`TrainStep`][camkit.TrainStep] and the collate need of a batch mix."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import nn

from camkit._checks import (
    check_choice,
    check_finite,
    check_int,
    check_labels,
    check_size,
    check_tensor,
)

CamNeed = Literal["none", "unmixed", "mixed"]
CAM_NEEDS = ("none", "unmixed", "mixed")
_HOOKS = ("_draw", "_apply", "_weigh", "check_params")


class Mix(nn.Module):
    """Base class of camkit's batch mixes: four things a training step asks of a mix.

    - ``needs_cams``, which class activation maps it needs: ``"none"`` (CutMix, Mixup),
      ``"unmixed"`` (the maps of the un-mixed batch for its labels, from a frozen side pass
      before mixing: SnapMix's label weights, Attentive CutMix's boxes) or ``"mixed"`` (the maps
      of the *mixed* batch for both labels, which the training forward computes anyway:
      ``SnapMix(cam_source="mixed")``). A mix that needs no model (``"none"``, ``"mixed"``) can
      also run in the DataLoader ([`MixCollate`][camkit.MixCollate]).
    - [`sample`][camkit.Mix.sample]: the random draws (a params ``NamedTuple``), made with the
      mix's ``generator``; given the un-mixed maps when ``draws_need_cams``.
    - [`apply`][camkit.Mix.apply]: the mixed batch for given draws, pure tensor code.
    - [`targets`][camkit.Mix.targets]: the ``(B, K)`` soft targets for given draws (and maps).

    Draws replay exactly: ``mix.apply(images, params)`` and ``mix.targets(..., params, ...)``
    give the same result for the same ``params``. [`mix_images`][camkit.Mix.mix_images] and
    ``forward`` are the two compositions users call. Public calls check their inputs; the
    training step checks its own inputs once and passes ``validate_args=False``.

    Adding a mix is one subclass: set ``needs_cams`` (and ``draws_need_cams``), call
    ``super().__init__(config, generator)``, and implement ``_draw`` (the draws, no checks),
    ``_apply``, ``_weigh`` and ``check_params``; the docs' method notes show one. A subclass
    missing one of these, with another ``needs_cams`` than ``"none"``, ``"unmixed"`` or
    ``"mixed"``, or whose ``__init__`` skips ``super().__init__`` is refused with an error that
    names what is missing.

    Args:
        config: the mix's settings, a frozen dataclass validated when built, with a
            ``num_classes`` field (``K``).
        generator: random generator of the draws (``None``: torch's global one).
    """

    needs_cams: ClassVar[CamNeed] = "none"
    draws_need_cams: ClassVar[bool] = False
    #: whether the mix takes ``(B, C, D, H, W)`` volumes as well as images (camkit's mixes do)
    volumes: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        need = cls.__dict__.get("needs_cams")
        if isinstance(need, str):  # a class attribute (a property is checked per instance)
            check_choice(need, f"{cls.__name__}.needs_cams", CAM_NEEDS)

    def __init__(self, config: Any, generator: torch.Generator | None = None) -> None:
        super().__init__()
        cls = type(self)
        missing = [hook for hook in _HOOKS if getattr(cls, hook) is getattr(Mix, hook)]
        if missing:
            raise TypeError(
                f"{cls.__name__}: a camkit.Mix implements _draw, _apply, _weigh and "
                f"check_params; missing: {', '.join(missing)} (see camkit.Mix)"
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator: expected a torch.Generator or None, got {type(generator).__name__}"
            )
        self.config = config
        self.generator = generator
        check_choice(self.needs_cams, f"{cls.__name__}.needs_cams", CAM_NEEDS)

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails; a Module whose __init__ never ran has no
        # _parameters, and would otherwise fail on some internal attribute of nn.Module
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}: the mix was never initialised (no {name!r} yet): its "
                "__init__ must call super().__init__(config, generator) (camkit.Mix)"
            )
        return super().__getattr__(name)

    @property
    def num_classes(self) -> int:
        """``K``, the number of classes of the soft targets (read-only)."""
        return self.config.num_classes

    # -- the hooks a mix implements ---------------------------------------------------------

    @property
    def _host_draws(self) -> bool:
        """Whether draws without a generator are made on the host (else on the images' device)."""
        return True

    def _draw(
        self,
        batch_size: int,
        height: int,
        width: int,
        cams: torch.Tensor | None,
        device: torch.device,
        generator: torch.Generator | None,
    ) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__}._draw(batch_size, height, width, cams, device, generator): "
            "not implemented (a camkit.Mix hook: return the draws, a params NamedTuple)"
        )

    def _apply(self, images: torch.Tensor, params: Any) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__}._apply(images, params): not implemented (a camkit.Mix hook: "
            "return the mixed batch)"
        )

    def _weigh(
        self,
        labels: torch.Tensor,
        cams: torch.Tensor | None,
        params: Any,
        size: tuple[int, int],
        dtype: torch.dtype,
    ) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__}._weigh(labels, cams, params, size, dtype): not implemented "
            "(a camkit.Mix hook: return the (B, K) soft targets)"
        )

    def check_params(self, params: Any, batch_size: int, size: tuple[int, int]) -> None:
        """Raise ``TypeError``/``ValueError`` unless ``params`` are this mix's draws for
        ``batch_size`` images of ``size = (H, W)``: their type, shapes and dtypes, and their
        values (weights in range, partners a permutation, boxes inside the image, ...).

        On an accelerator the value checks are queued with ``torch._assert_async`` (no host
        sync) and fail at the next synchronisation.
        """
        raise NotImplementedError(
            f"{type(self).__name__}.check_params(params, batch_size, size): not implemented (a "
            "camkit.Mix hook: refuse draws that are not this mix's for the batch)"
        )

    def _check_cams(self, cams: object, batch_size: int, name: str = "cams", rank: int = 2) -> None:
        """``(B, h, w)`` maps of the un-mixed batch, or ``(B, 2, h, w)`` of the mixed one
        (``rank=3``, volumes: ``(B, d, h, w)``, ``(B, 2, d, h, w)``)."""
        if self.needs_cams == "none":
            return
        if cams is None:
            which = "un-mixed" if self.needs_cams == "unmixed" else "mixed"
            raise ValueError(
                f"{name}: {type(self).__name__} needs the CAMs of the {which} batch, got None"
            )
        if self.needs_cams == "mixed":
            check_tensor(cams, name, shape=(batch_size, 2, *(None,) * rank), floating=True)
        else:
            check_tensor(cams, name, ndim=rank + 1, floating=True)
            if cams.shape[0] != batch_size:
                raise ValueError(
                    f"{name}: expected {batch_size} maps (one per image), got shape "
                    f"{tuple(cams.shape)}"
                )
        check_finite(cams, name)  # a NaN map would weigh (or draw) as if uniform

    # -- the protocol ----------------------------------------------------------------------

    def draw_device(self, images: torch.Tensor) -> torch.device:
        """Where draws for ``images`` are made: the generator's device, else the host for host
        draws (the parameters are then known without a device sync), else the images' device."""
        if self.generator is not None:
            return self.generator.device
        return torch.device("cpu") if self._host_draws else images.device

    def sample(
        self,
        batch_size: int,
        height: int,
        width: int,
        *,
        cams: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        depth: int | None = None,
    ) -> Any:
        """Draw the parameters of one batch with this mix's generator.

        Args:
            batch_size: ``B`` ≥ 1.
            height: image height ``H`` ≥ 1.
            width: image width ``W`` ≥ 1.
            depth: the depth ``D`` ≥ 1 of ``(B, C, D, H, W)`` volumes, for a mix that takes them
                (``volumes``); ``None`` for images.
            cams: ``(B, h, w)`` maps of the un-mixed batch for its labels (volumes:
                ``(B, d, h, w)``), for a mix whose draws depend on them (``draws_need_cams``);
                ignored otherwise.
            device: where to draw (default: the generator's device, else the host).

        Returns:
            The mix's params ``NamedTuple`` on ``device``.
        """
        check_int(batch_size, "batch_size", minimum=1)
        check_int(height, "height", minimum=1)
        check_int(width, "width", minimum=1)
        if self.draws_need_cams:
            if cams is None:
                raise ValueError(
                    f"cams: the draws of {type(self).__name__} depend on the CAMs of the "
                    "un-mixed batch: pass cams (B, h, w)"
                )
            grid = (None,) * (2 if depth is None else 3)  # volumes: (B, d, h, w)
            check_tensor(cams, "cams", shape=(batch_size, *grid), floating=True)
            check_finite(cams, "cams")
        if depth is not None:
            if not self.volumes:
                raise ValueError(
                    f"depth: {type(self).__name__} mixes (B, C, H, W) images and does not take "
                    f"volumes yet, got depth={depth!r}"
                )
            check_int(depth, "depth", minimum=1)
        where = self._device(device)
        return self._draw_for(batch_size, height, width, cams, where, self.generator, depth)

    def _draw_for(self, batch_size, height, width, cams, device, generator, depth) -> Any:
        """``_draw``, with ``depth=`` only for volumes (a mix of images never sees it)."""
        extra = {} if depth is None else {"depth": depth}
        return self._draw(batch_size, height, width, cams, device, generator, **extra)

    def _device(self, device: torch.device | str | None) -> torch.device:
        if device is None:
            return self.generator.device if self.generator is not None else torch.device("cpu")
        device = torch.device(device)
        if self.generator is not None and self.generator.device.type != device.type:
            raise ValueError(
                f"device: expected the generator's device ({self.generator.device}), got {device}"
            )
        return device

    def apply(
        self, images: torch.Tensor, params: Any, *, validate_args: bool = True
    ) -> torch.Tensor:
        """The mixed batch for the draws ``params`` (``images`` is not modified).

        Args:
            images: ``(B, C, H, W)`` float batch, finite.
            params: draws of this mix for ``B`` images of this size.
            validate_args: check the inputs (the training step checks once and passes False).
        """
        if validate_args:
            self._check_images(images)
            self.check_params(params, images.shape[0], tuple(images.shape[2:]))
        return self._apply(images, params)

    def _check_images(self, images: object) -> None:
        if not self.volumes and isinstance(images, torch.Tensor) and images.ndim == 5:
            raise ValueError(
                f"images: {type(self).__name__} mixes (B, C, H, W) images and does not take "
                f"volumes yet, got a tensor of shape {tuple(images.shape)} (camkit's mixes take "
                "them)"
            )
        volume = self.volumes and isinstance(images, torch.Tensor) and images.ndim == 5
        # any other rank is told (B, C, H, W): the images every mix takes
        check_tensor(images, "images", ndim=5 if volume else 4, floating=True)
        check_finite(images, "images")  # a NaN pixel would be pasted into its partner too

    def targets(
        self,
        labels: torch.Tensor,
        cams: torch.Tensor | None,
        params: Any,
        size: tuple[int, int],
        *,
        validate_args: bool = True,
    ) -> torch.Tensor:
        """Soft targets ``(B, K)`` (float32 or wider) of the draws ``params``.

        Args:
            labels: ``(B,)`` integer class indices in ``[0, K)``.
            cams: what ``needs_cams`` says: ``None`` (``"none"``), ``(B, h, w)`` maps of the
                un-mixed images for their labels (``"unmixed"``), or ``(B, 2, h, w)`` maps of the
                mixed images for ``labels`` and ``labels[params.perm]`` (``"mixed"``).
            params: draws of this mix for ``B`` images.
            size: the image size ``(H, W)`` the draws were made for (volumes: ``(D, H, W)``).
            validate_args: check the inputs (the training step checks once and passes False).
        """
        if validate_args:
            batch = labels.shape[0] if isinstance(labels, torch.Tensor) else -1
            size = check_size(size, "size", (2, 3) if self.volumes else (2,))
            self.check_params(params, batch, size)
            check_labels(labels, "labels", self.num_classes, batch=params.perm.shape[0])
            self._check_cams(cams, params.perm.shape[0], rank=len(size))
        labels = labels.long()  # uint8/int32 labels are valid; the scatters need int64
        dtype = (
            torch.promote_types(cams.dtype, torch.float32) if cams is not None else torch.float32
        )
        return self._weigh(labels, cams, params, size, dtype)

    def mix_images(
        self,
        images: torch.Tensor,
        params: Any = None,
        *,
        cams: torch.Tensor | None = None,
        validate_args: bool = True,
    ) -> tuple[torch.Tensor, Any]:
        """Draw (unless ``params`` are given) and apply: ``(mixed, params)``.

        ``cams``: the un-mixed maps, for a mix whose draws depend on them.
        """
        if validate_args:
            self._check_images(images)
        b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        depth = images.shape[2] if images.ndim == 5 else None
        if params is None:
            device = self.draw_device(images)
            if validate_args:
                params = self.sample(b, h, w, cams=cams, device=device, depth=depth)
            else:
                params = self._draw_for(b, h, w, cams, device, self.generator, depth)
        elif validate_args:
            self.check_params(params, b, tuple(images.shape[2:]))
        return self._apply(images, params), params

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        cams: torch.Tensor | None = None,
        params: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch: ``(mixed (B, C, H, W), soft targets (B, K))``, new draws or ``params``.

        ``cams``: ``(B, h, w)`` maps of the un-mixed images for their labels, for a mix that needs
        them; a mix that weighs by the *mixed* batch's maps cannot run here (see
        [`TrainStep`][camkit.TrainStep]).
        """
        if self.needs_cams == "mixed":
            raise ValueError(
                f"{type(self).__name__} weighs the labels with the CAMs of the mixed images, which "
                "only the training forward has: use camkit.TrainStep, or call mix_images() and "
                "then targets() with the CAMs of the mixed batch"
            )
        self._check_images(images)
        b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        depth = images.shape[2] if images.ndim == 5 else None
        self._check_cams(cams, b, rank=images.ndim - 2)
        if cams is not None:
            cams = cams.to(images.device)
        if params is None:
            params = self.sample(b, h, w, cams=cams, device=self.draw_device(images), depth=depth)
        else:
            self.check_params(params, b, tuple(images.shape[2:]))
        mixed = self._apply(images, params)
        # after the draws: under torch.compile a check before them would be a graph of its own;
        # on an accelerator the range check is queued (torch._assert_async), no host sync
        check_labels(labels, "labels", self.num_classes, batch=b)
        dtype = torch.promote_types(images.dtype, torch.float32)
        size = tuple(images.shape[2:])
        soft = self._weigh(labels.long().to(images.device), cams, params, size, dtype)
        return mixed, soft
