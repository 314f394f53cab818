"""The [`TrainStep`][camkit.TrainStep] that `camkit.timm_task.TrainStepTask` trains: it shows
timm's optimiser factory the model's parameter groups. Private module (no ``timm.task`` import
here: the version check lives in `camkit.timm_task`)."""

from __future__ import annotations

from collections.abc import Callable

from camkit.train import TrainStep

__all__ = ["TimmTrainStep"]

_PREFIX = "model."


class TimmTrainStep(TrainStep):
    """A [`TrainStep`][camkit.TrainStep] that shows timm's optimiser factory the model's parameter
    groups.

    ``train.py`` builds its optimiser on ``task.get_trainable_module()``, i.e. on the step, whose
    parameter names are the model's with a ``model.`` prefix. ``create_optimizer_v2`` asks the
    module it is given for ``no_weight_decay()`` (e.g. a ViT's ``pos_embed``) and, with
    ``--layer-decay``, for ``group_matcher()``; these two answer with the model's own, renamed.
    """

    def no_weight_decay(self) -> set[str]:
        """The model's ``no_weight_decay()`` names (fnmatch patterns), prefixed ``model.``."""
        names = getattr(self.model, "no_weight_decay", None)
        return {_PREFIX + name for name in names()} if callable(names) else set()

    def group_matcher(self, coarse: bool = False) -> Callable[[str], float]:
        """Layer index of each step parameter, from the model's ``group_matcher`` (layer decay).

        Parameters the model does not group (or all of them, for a model without a
        ``group_matcher``) go to the last layer.
        """
        layer_of: dict[str, int] = {}
        matcher = getattr(self.model, "group_matcher", None)
        if callable(matcher):
            from timm.models import group_parameters

            layer_of = group_parameters(self.model, matcher(coarse=coarse), reverse=True)

        def layer(name: str) -> float:
            return layer_of.get(name.removeprefix(_PREFIX), float("inf"))

        return layer
