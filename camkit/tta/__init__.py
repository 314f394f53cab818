"""CAM-directed test-time augmentation (Ali, Shaharabany & Wolf, MIDL 2022, §3.3).

The image is classified once; the CAM of the predicted class is upsampled to the image, summed
over non-overlapping ``patch_size × patch_size`` cells, and ``k`` masked copies are classified:
copy ``j`` masks the ``j`` most relevant cells (cumulatively). A copy *supports* the prediction when
its probability of the predicted class exceeds ``θ``; when more than half of the votes do not
support it, the label is flipped. For two classes this is the paper's rule (``p ≥ θ`` for a positive
prediction, ``p < 1 − θ`` for a negative one, up to ties); for ``K`` classes the flipped label is
the runner-up class of the unmasked prediction.

camkit evaluates the copies batched over images and masks, without autograd, and stops evaluating
an image as soon as one side has a majority (*exact early exit*: the labels are identical to the
full vote, only skipped copies are never computed). The same masked copies give a deletion curve
(`deletion_curve`, `deletion_auc`) that measures how faithful the CAMs are.
"""

from camkit.tta._deletion import DeletionCurve, deletion_auc, deletion_curve
from camkit.tta._vote import CAMMaskingTTA, TTAResult

__all__ = ["CAMMaskingTTA", "DeletionCurve", "TTAResult", "deletion_auc", "deletion_curve"]
