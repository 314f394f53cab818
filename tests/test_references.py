"""camkit's CAMs of non-timm models against the references: pytorch-grad-cam and MONAI.

- pytorch-grad-cam's ``GradCAM`` on torchvision ResNet-50 with the paper's MLP head (``fc`` =
  Linear 2048→512, ReLU, Linear 512→2), target layer ``layer4``: its map at the feature
  resolution (its own ``get_cam_image`` and ReLU, before upsampling and min-max scaling) against
  camkit's ``"gradcam"`` and the ReLU of camkit's head-gradient ``"cam"`` divided by ``h·w``.
- MONAI's ``monai.visualize.CAM`` and ``GradCAM`` on MONAI's ``DenseNet121`` in 2-D and 3-D
  (target layer ``class_layers.relu``, MONAI's own documented choice): their raw maps
  (``compute_map``, before upsampling and normalisation) against camkit's ``"cam"`` (plus the
  class bias: MONAI's CAM applies the whole ``fc`` layer at each cell, camkit leaves the bias
  out so that the map's mean plus the bias is the logit) and ``"gradcam"``. MONAI's GradCAM runs
  one image at a time: on a batch its class score mixes the images' classes (see below).

Every case runs on random weights in eval mode and reports the Pearson correlation (minimum
over the images) and the largest absolute difference; ``python -m tests.test_references``
prints them (the table in docs/your-model.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from torch import nn

from camkit import CAMExtractor
from tests.test_cam_methods import _pearson, _pgc_maps

monai_nets = pytest.importorskip("monai.networks.nets")
monai_visualize = pytest.importorskip("monai.visualize")

R_MIN = 0.9999


def _paper_resnet50() -> nn.Module:
    torch.manual_seed(0)
    model = tvm.resnet50(num_classes=2)
    model.fc = nn.Sequential(nn.Linear(2048, 512), nn.ReLU(), nn.Linear(512, 2))
    return model.double().eval()


def resnet50_vs_pytorch_grad_cam() -> dict[str, tuple[float, float]]:
    """``{camkit method: (min r, max |difference|)}`` against pgc's GradCAM at ``layer4``."""
    model = _paper_resnet50()
    images = torch.randn(
        4, 3, 128, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    target = torch.tensor([0, 1, 1, 0])
    ref = _pgc_maps("gradcam", model, model.layer4, images, target)
    out = {}
    with torch.no_grad():
        gradcam = CAMExtractor(model, method="gradcam")(images, target).cams.numpy()
        cam = CAMExtractor(model)(images, target).cams
    cells = cam.shape[1] * cam.shape[2]
    for name, ours in (("gradcam", gradcam), ("cam", (cam.relu() / cells).numpy())):
        out[name] = (_pearson(ours, ref), float(np.abs(ours - ref).max()))
    return out


def _monai_densenet(dims: int) -> nn.Module:
    torch.manual_seed(0)
    return monai_nets.DenseNet121(spatial_dims=dims, in_channels=1, out_channels=3).eval()


def densenet121_vs_monai(dims: int, size: int, batch: int) -> dict[str, tuple[float, float]]:
    """``{method: (min r, max |difference|)}`` of camkit against MONAI's CAM and GradCAM."""
    model = _monai_densenet(dims)
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(batch, 1, *(size,) * dims, generator=gen)
    cam = monai_visualize.CAM(
        model, target_layers="class_layers.relu", fc_layers="class_layers.out"
    )
    gradcam = monai_visualize.GradCAM(model, target_layers="class_layers.relu")
    with torch.no_grad():
        ref_cam = cam.compute_map(images)[:, 0]
        ext = CAMExtractor(model)
        out = ext(images)
        ours_cam = out.cams + model.class_layers.out.bias[out.target][(...,) + (None,) * dims]
    # one image at a time: with a batch, MONAI's class score ``logits[:, class_idx]`` indexes
    # every image's logits with every image's class ((B, B), summed), so each map is the
    # gradient of a sum over the batch's classes (twice the map when both images share a class)
    ref_grad = torch.cat([gradcam.compute_map(image[None])[:, 0].detach() for image in images])
    with torch.no_grad():
        ours_grad = CAMExtractor(model, method="gradcam")(images).cams
    table = {}
    for name, ours, ref in (("cam", ours_cam, ref_cam), ("gradcam", ours_grad, ref_grad)):
        ours, ref = ours.double().numpy(), ref.double().numpy()
        table[name] = (_pearson(ours, ref), float(np.abs(ours - ref).max()))
    return table


def test_paper_resnet50_matches_pytorch_grad_cam():
    table = resnet50_vs_pytorch_grad_cam()
    for name, (r, diff) in table.items():
        assert r >= R_MIN, (name, r)
        assert diff <= 1e-12, (name, diff)  # float64: the same numbers


def test_densenet121_2d_matches_monai():
    table = densenet121_vs_monai(2, 128, 2)
    for name, (r, diff) in table.items():
        assert r >= R_MIN, (name, r)
        assert diff <= 1e-4, (name, diff)  # float32 sums in another order


def test_monai_gradcam_on_a_batch_sums_the_batch_classes():
    """Why the reference runs MONAI's GradCAM per image: on a batch of two images with the same
    predicted class its map is twice the per-image map (camkit's is the per-image one)."""
    model = _monai_densenet(2)
    image = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    gradcam = monai_visualize.GradCAM(model, target_layers="class_layers.relu")
    single = gradcam.compute_map(image).detach()
    pair = gradcam.compute_map(torch.cat([image, image])).detach()
    torch.testing.assert_close(pair, 2 * torch.cat([single, single]))
    with torch.no_grad():
        ours = CAMExtractor(model, method="gradcam")(torch.cat([image, image])).cams
    torch.testing.assert_close(ours, torch.cat([single, single])[:, 0], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_densenet121_3d_matches_monai():
    table = densenet121_vs_monai(3, 64, 1)
    for name, (r, diff) in table.items():
        assert r >= R_MIN, (name, r)
        assert diff <= 1e-4, (name, diff)


if __name__ == "__main__":
    rows = {"torchvision resnet50 + MLP head vs pytorch-grad-cam": resnet50_vs_pytorch_grad_cam()}
    rows["MONAI DenseNet121 2-D (128², batch 2)"] = densenet121_vs_monai(2, 128, 2)
    rows["MONAI DenseNet121 3-D (64³, batch 1)"] = densenet121_vs_monai(3, 64, 1)
    for case, table in rows.items():
        for name, (r, diff) in table.items():
            print(f"{case} | {name} | r = {r:.7f} | max |diff| = {diff:.3g}")
