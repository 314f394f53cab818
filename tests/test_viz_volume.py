"""camkit.viz.volume_figure: the slices through each CAM's peak, the projection, and the refusals.

The panels are checked against NumPy slicing of the volume (exact, with ``alpha=0``) and against a
float64 reference of the upsampled, volume-normalised map coloured with matplotlib's table.
"""

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import camkit
from camkit.viz import overlay_cams, save_figure, volume_figure
from tests.helpers import DATA, needs_medmnist

TITLES_3D = ("axial: d = {}", "coronal: h = {}", "sagittal: w = {}", "max projection over d")


def _panels(fig, count):
    """The image data, title and peak marker ``(x, y)`` of the first ``count`` axes."""
    out = []
    for ax in fig.axes[:count]:
        (image,) = ax.get_images()
        (marker,) = ax.lines
        out.append((np.asarray(image.get_array()), ax.get_title(), marker.get_xydata()[0].tolist()))
    return out


def _reference(volume, cams, alpha, cmap="jet"):
    """float64: trilinear upsampling, min-max over the whole volume, peaks, coloured blend."""
    size = volume.shape[1:]
    up = F.interpolate(cams.double()[:, None], size=size, mode="trilinear", align_corners=False)
    up = up[:, 0].numpy()
    lo, hi = up.min((1, 2, 3), keepdims=True), up.max((1, 2, 3), keepdims=True)
    norm = (up - lo) / (hi - lo)
    peaks = [np.unravel_index(int(m.argmax()), size) for m in up]
    grey = volume.double().clamp(0, 1)[0].numpy()

    def blend(image, heat):
        return (1 - alpha) * image[..., None] + alpha * matplotlib.colormaps[cmap](heat)[..., :3]

    return norm, peaks, grey, blend


def test_hand_made_volume_slices_orientation_and_marker():
    """A full-resolution map with one hot voxel: its slices, read back as NumPy slices."""
    gen = torch.Generator().manual_seed(0)
    volume = torch.rand(1, 6, 8, 10, generator=gen)
    cam = torch.rand(6, 8, 10, generator=gen) * 0.5
    cam[2, 5, 7] = 3.0
    v = volume[0].numpy()
    fig = volume_figure(volume, cam, alpha=0.0)  # alpha 0: the panels are the volume itself
    assert len(fig.axes) == 5 and fig.axes[4].get_ylabel() == "CAM (each map min → max)"
    assert fig.get_suptitle() == "CAM through its peak (+)"
    panels = _panels(fig, 4)
    assert [t for _, t, _ in panels] == [
        t.format(i) for t, i in zip(TITLES_3D, (2, 5, 7, 0), strict=True)
    ]
    expected = [v[2], v[:, 5], v[:, :, 7], v.max(0)]  # axial (H, W), coronal (D, W), ...
    for (image, _, _), grey in zip(panels, expected, strict=True):
        assert image.shape == (*grey.shape, 3)
        np.testing.assert_allclose(image, np.repeat(grey[..., None], 3, -1), atol=1e-6, rtol=0)
    # the + sits on the peak: (x, y) = (column, row) of the remaining axes
    assert [m for _, _, m in panels] == [[7, 5], [7, 2], [5, 2], [7, 5]]
    # alpha 1: the colour alone; the peak is jet's top colour in every panel, the projection is the
    # map's maximum over d
    colour = _panels(volume_figure(volume, cam, alpha=1.0), 4)
    top = matplotlib.colormaps["jet"](1.0)[:3]
    for image, _, (x, y) in colour:
        np.testing.assert_allclose(image[int(y), int(x)], top, atol=0.03)
    norm = ((cam - cam.min()) / (cam.max() - cam.min())).numpy()
    jet = matplotlib.colormaps["jet"]
    np.testing.assert_allclose(colour[3][0], jet(norm.max(0))[..., :3], atol=0.03, rtol=0)
    np.testing.assert_allclose(colour[1][0], jet(norm[:, 5])[..., :3], atol=0.03, rtol=0)


def test_low_resolution_maps_peaks_rows_and_colours_against_float64_reference():
    gen = torch.Generator().manual_seed(3)
    volume = torch.rand(1, 6, 8, 10, generator=gen)
    cams = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    alpha = 0.6
    norm, peaks, grey, blend = _reference(volume, cams, alpha)
    fig = volume_figure(volume, cams, names=["normal", "mass"], alpha=alpha, title=None)
    assert len(fig.axes) == 9 and fig.get_suptitle() == ""
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (2, 4)
    panels = _panels(fig, 8)
    for row, (name, (d, h, w)) in enumerate(zip(["normal", "mass"], peaks, strict=True)):
        titles = [f"{name}\n{t.format(i)}" for t, i in zip(TITLES_3D, (d, h, w, 0), strict=True)]
        assert [t for _, t, _ in panels[4 * row : 4 * row + 4]] == titles
        assert [m for _, _, m in panels[4 * row : 4 * row + 4]] == [[w, h], [w, d], [h, d], [w, h]]
        m = norm[row]
        refs = [
            blend(grey[d], m[d]),
            blend(grey[:, h], m[:, h]),
            blend(grey[:, :, w], m[:, :, w]),
            blend(grey.max(0), m.max(0)),
        ]
        for (image, _, _), ref in zip(panels[4 * row : 4 * row + 4], refs, strict=True):
            np.testing.assert_allclose(image, ref, atol=0.025, rtol=0)
    assert peaks[0] != peaks[1]  # the two rows really slice different places
    three = volume_figure(volume, cams, projection=False, colorbar=False)
    assert len(three.axes) == 6
    assert [ax.get_title() for ax in three.axes[:3]] == [
        t.format(i) for t, i in zip(TITLES_3D[:3], peaks[0], strict=True)
    ]


def test_an_image_takes_the_same_path_as_overlay_cams():
    """(C, H, W) with (K, h, w) maps: nothing sliced, each panel the overlay of overlay_cams."""
    gen = torch.Generator().manual_seed(5)
    image = torch.rand(3, 12, 16, generator=gen)
    cams = torch.randn(2, 3, 4, generator=gen)
    fig = volume_figure(image, cams, mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5], cmap="viridis")
    assert len(fig.axes) == 3  # one panel per map (no projection for an image), the colour bar
    panels = _panels(fig, 2)
    expected = overlay_cams(
        image.expand(2, -1, -1, -1), cams, mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5], cmap="viridis"
    )
    up = F.interpolate(cams[:, None], size=(12, 16), mode="bilinear", align_corners=False)[:, 0]
    for k, (shown, title, marker) in enumerate(panels):
        assert title == "image"
        np.testing.assert_array_equal(shown, expected[k].permute(1, 2, 0).numpy())
        y, x = np.unravel_index(int(up[k].argmax()), (12, 16))
        assert marker == [x, y]
    one = volume_figure(image[:1], cams[0], names=["covid"])  # a single map (h, w), grey
    assert [ax.get_title() for ax in one.axes[:1]] == ["covid\nimage"] and len(one.axes) == 2


def test_colour_volume_is_denormalised_and_a_constant_map_peaks_at_the_origin():
    gen = torch.Generator().manual_seed(7)
    volume = torch.randn(3, 4, 5, 6, generator=gen)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.1, 0.3])
    fig = volume_figure(volume, torch.ones(2, 2, 2), mean=mean, std=std, alpha=0.0)
    shown = (volume * std.view(3, 1, 1, 1) + mean.view(3, 1, 1, 1)).clamp(0, 1)
    panels = _panels(fig, 4)
    assert [t for _, t, _ in panels] == [t.format(0) for t in TITLES_3D]  # constant: (0, 0, 0)
    np.testing.assert_allclose(panels[1][0], shown[:, :, 0].permute(1, 2, 0).numpy(), atol=1e-6)
    np.testing.assert_allclose(panels[3][0], shown.amax(1).permute(1, 2, 0).numpy(), atol=1e-6)
    flat = _panels(volume_figure(volume, torch.ones(2, 2, 2), alpha=1.0), 1)[0][0]
    np.testing.assert_allclose(flat, np.broadcast_to(matplotlib.colormaps["jet"](0.0)[:3],
                                                     flat.shape), atol=0.03)  # fmt: skip


V, C = torch.rand(1, 4, 4, 4), torch.rand(2, 2, 2)  # a good volume and map


@pytest.mark.parametrize(
    ("volume", "cams", "kwargs", "error", "message"),
    [
        (torch.rand(1, 1, 4, 4, 4), C, {}, ValueError, r"volume: expected a 3 or 4-D"),
        (torch.rand(4, 4), torch.rand(2, 2), {}, ValueError, r"volume: expected a 3 or 4-D"),
        (torch.zeros(1, 4, 4, 4, dtype=torch.uint8), C, {}, TypeError, r"volume:"),
        (torch.rand(2, 4, 4, 4), C, {}, ValueError,
         r"volume: expected \(C, D, H, W\) with 1 or 3 channels and no empty side, got shape "
         r"\(2, 4, 4, 4\)"),
        (torch.rand(1, 0, 4, 4), C, {}, ValueError, r"volume: .*\(1, 0, 4, 4\)"),
        (V, torch.rand(2, 2), {}, ValueError, r"cams: expected a 3 or 4-D"),
        (torch.rand(1, 4, 4), torch.rand(1, 2, 2, 2), {}, ValueError, r"cams: expected a 2 or 3-D"),
        (V, torch.ones(2, 2, 2, dtype=torch.long), {}, TypeError, r"cams:"),
        (V, torch.full((2, 2, 2), float("nan")), {}, ValueError, r"cams: expected finite values"),
        (V, torch.rand(0, 2, 2, 2), {}, ValueError, r"cams: expected no empty"),
        (V, torch.rand(2, 2, 2, 2), {"names": ["a"]}, ValueError,
         r"names: expected 2 values \(one per map\), got 1"),
        (V, C, {"alpha": 1.5}, ValueError, r"alpha:"),
        (V, C, {"cmap": 3}, TypeError, r"cmap:"),
        (V, C, {"cmap": "no-such-map"}, ValueError, r"cmap:"),
        (V, C, {"mean": [0.5, 0.5]}, ValueError, r"mean:"),
    ],
)  # fmt: skip
def test_refusals_name_the_argument(volume, cams, kwargs, error, message):
    with pytest.raises(error, match=rf"^{message}"):
        volume_figure(volume, cams, **kwargs)


class _Tiny3d(torch.nn.Module):
    """A timm-contract 3-D classifier: one strided conv, average pooling, linear head."""

    def __init__(self):
        super().__init__()
        self.num_classes, self.num_features = 2, 4
        self.conv, self.fc = torch.nn.Conv3d(1, 4, 4, stride=4), torch.nn.Linear(4, 2)

    def forward_features(self, x):
        return F.relu(self.conv(x))

    def forward_head(self, x, pre_logits=False):
        x = x.mean((2, 3, 4))
        return x if pre_logits else self.fc(x)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_the_maps_of_a_3d_cam_extractor_both_classes():
    torch.manual_seed(0)
    model, x = _Tiny3d().eval(), torch.rand(1, 1, 16, 16, 16)
    out = camkit.CAMExtractor(model)(x, torch.tensor([[0, 1]]))  # both classes' maps, (1, 2, 4³)
    assert out.cams.shape == (1, 2, 4, 4, 4)
    fig = volume_figure(x[0], out.cams[0], names=["normal", "mass"])
    up = camkit.upsample_cams(out.cams[0], (16, 16, 16))
    for k, name in enumerate(["normal", "mass"]):
        d, h, w = np.unravel_index(int(up[k].argmax()), (16, 16, 16))
        titles = [ax.get_title() for ax in fig.axes[4 * k : 4 * k + 3]]
        assert titles == [
            f"{name}\n{t.format(i)}" for t, i in zip(TITLES_3D[:3], (d, h, w), strict=True)
        ]


def test_exported_and_saved(tmp_path):
    assert camkit.volume_figure is volume_figure and "volume_figure" in camkit.__all__
    cam = torch.zeros(4, 4, 4)
    cam[1, 2, 3] = 1.0
    path = save_figure(volume_figure(torch.rand(1, 8, 8, 8), cam), tmp_path / "v.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_medmnist
def test_a_real_adrenal_mask_its_silhouette_in_the_projection():
    """AdrenalMNIST3D (a shape mask, not CT): the projection's grey is the mask's silhouette."""
    images, _ = camkit.medmnist(DATA / "MedMNIST" / "adrenalmnist3d.npz", "val")
    mask = images[0]  # (1, 28, 28, 28), 0 or 1
    cam = F.avg_pool3d(mask, 7)[0]  # a 4³ "CAM": the mask's share of each 7³ cell
    panels = _panels(volume_figure(mask, cam, alpha=0.0), 4)
    silhouette = mask[0].amax(0).numpy()
    assert 0 < silhouette.sum() < silhouette.size
    np.testing.assert_array_equal(panels[3][0], np.repeat(silhouette[..., None], 3, -1))
    d = int(panels[0][1].rsplit(" ", 1)[1])
    np.testing.assert_array_equal(panels[0][0][..., 0], mask[0, d].numpy())
