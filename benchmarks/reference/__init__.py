"""The straightforward implementations camkit is compared against (written here, from the spec).

This is the one reference module: the tests (``tests/harness.py``, ``tests/test_losses.py``,
``tests/test_tta.py``, ``tests/test_benchmarks.py``) and the benchmarks (``benchmarks/perf.py``)
all compare camkit with these functions. They are plain loops over images, cells and pairs, use
only torch/timm calls (never camkit's code paths) and compute in float64 where it helps; they
follow the conventions of camkit's docs (box geometry, CAM normalisation, cell ranking, vote rule)
so that outputs can be compared to rounding.

- `loop_snapmix` / `loop_snapmix_apply`: SnapMix as one would first write it, one sample at a
  time on host integers: for each image, crop the partner's box, ``F.interpolate`` it to the
  receiving box (``align_corners=True``, as the SnapMix authors' code), paste it, and sum the CAM
  distributions inside the boxes; a constant CAM is uniform (camkit) or takes the authors'
  fallback (``constant_cam="released"``). `loop_snapmix_apply` takes volumes too (cuboids,
  trilinear), one volume at a time.
- `loop_attentive_cutmix`: Attentive CutMix one image (volume) at a time: the partner's ``k``
  highest CAM cells, each cell's pixels (voxels) copied in, the target by the pasted share.
- `reference_cpe`: the contrastive patch embedding loss (Eq. 1, generalised to ``n`` cells, a
  temperature and L2 normalisation), one image and one pair at a time in float64, differentiable.
- `reference_cams`: CAMs of a timm classifier from ``forward_features``/``forward_head`` and
  autograd (the head-gradient class weights), one image at a time.
- `reference_tta` / `released_tta`: the CAM-masking test-time augmentation as the paper's
  released code ran it: one image at a time with autograd on, a forward for the prediction, a
  second forward for the CAM, then the ``k`` cumulatively masked copies forwarded one by one.
- `reference_vote`: the vote alone, on given step probabilities, one image at a time.
"""

from benchmarks.reference._cam import reference_cams, reference_cpe
from benchmarks.reference._mix import (
    Box,
    loop_attentive_cutmix,
    loop_sample_params,
    loop_snapmix,
    loop_snapmix_apply,
    params_to_lists,
)
from benchmarks.reference._tta import (
    ReferenceTTA,
    reference_cell_order,
    reference_mask,
    reference_tta,
    reference_vote,
    released_tta,
)

__all__ = [
    "Box",
    "ReferenceTTA",
    "loop_attentive_cutmix",
    "loop_sample_params",
    "loop_snapmix",
    "loop_snapmix_apply",
    "params_to_lists",
    "reference_cams",
    "reference_cell_order",
    "reference_cpe",
    "reference_mask",
    "reference_tta",
    "reference_vote",
    "released_tta",
]
