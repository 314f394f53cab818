"""Seeing what camkit does: CAM overlays, volumes through their CAM peaks, SnapMix, TTA and
deletion-curve figures.

[`overlay_cams`][camkit.overlay_cams] is batched tensor code on the images' device (kornia
colormaps; no OpenCV, no matplotlib). The figure builders return a matplotlib `Figure` made without
pyplot (no global state, no display), importing matplotlib only when called.

The modules, by job: ``_overlay`` (the overlay maths), ``_common`` (what every figure shares and
`save_figure`), ``_cams`` (`cam_grid`, `volume_figure`), ``_methods`` (`snapmix_figure`,
`tta_figure`, `deletion_figure`).
"""

from camkit.viz._cams import cam_grid, volume_figure
from camkit.viz._common import save_figure
from camkit.viz._methods import deletion_figure, snapmix_figure, tta_figure
from camkit.viz._overlay import overlay_cams

__all__ = [
    "cam_grid",
    "deletion_figure",
    "overlay_cams",
    "save_figure",
    "snapmix_figure",
    "tta_figure",
    "volume_figure",
]
