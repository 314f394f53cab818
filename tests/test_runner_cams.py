"""benchmarks.runner.cams: the body mask of CT slices and the share of CAM mass inside it."""

from __future__ import annotations

from types import SimpleNamespace

import torch

import camkit
from benchmarks.runner.cams import body_mask, body_share
from tests.helpers import TinyNet


def _slice() -> torch.Tensor:
    """A 16×16 'CT slice': dark outside, a bright ring (the chest wall) around a dark lung."""
    image = torch.zeros(3, 16, 16, dtype=torch.uint8)
    image[:, 3:13, 3:13] = 200
    image[:, 5:11, 5:11] = 10  # dark, but enclosed by the ring
    return image


def test_body_mask_keeps_dark_regions_enclosed_by_the_body():
    mask = body_mask(_slice()[None])[0]
    want = torch.zeros(16, 16, dtype=torch.bool)
    want[3:13, 3:13] = True
    assert torch.equal(mask, want)
    open_ring = _slice()
    open_ring[:, 7:9, 3:5] = 10  # a gap in the wall: the lung joins the outside
    assert int(body_mask(open_ring[None])[0].sum()) == 100 - 36 - 4


def test_body_share_is_the_positive_cam_mass_inside_the_mask():
    torch.manual_seed(0)
    model = TinyNet(stride=4).eval()
    images = torch.stack([_slice(), _slice().flip(-1)])
    images[1, :, :, :6] = 255  # a bright band at the left edge becomes body too
    data = SimpleNamespace(to_input=lambda x: x.float() / 255 - 0.5)
    shares = body_share(model, data, images)
    cams = camkit.CAMExtractor(model).forward_frozen(data.to_input(images)).cams
    mass = camkit.upsample_cams(cams, (16, 16)).clamp_min(0)
    want = (mass * body_mask(images)).flatten(1).sum(1) / mass.flatten(1).sum(1)
    assert torch.allclose(shares, want) and not torch.allclose(shares[0], shares[1])
    assert ((shares >= 0) & (shares <= 1)).all()
