"""The read-only settings of camkit's modules.

A module that validates its settings once keeps them in a frozen dataclass, ``self.config``, and
reads each one back through a `config_setting` property, so that the config stays the one source
of the settings (SnapMix, CAMMaskingTTA, ContrastivePatchLoss).
"""

from __future__ import annotations

__all__ = ["config_setting"]


def config_setting(name: str) -> property:
    """A read-only property returning ``self.config.<name>``.

    Args:
        name: the field of the module's frozen ``config``.

    Returns:
        A property without a setter: assigning to it raises ``AttributeError``.

    Examples:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class _Config:
        ...     k: int
        >>> class Holder:
        ...     k = config_setting("k")
        ...     def __init__(self):
        ...         self.config = _Config(3)
        >>> Holder().k
        3
    """
    return property(lambda self: getattr(self.config, name), doc=f"`config.{name}` (read-only).")
