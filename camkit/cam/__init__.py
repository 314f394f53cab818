"""Class activation maps for any classifier (timm's contract, `camkit.models`' adapters), images
and volumes, and the map reductions camkit builds on.

A class activation map (CAM, Zhou et al. 2016) of class ``c`` is the class's weight vector
applied at every cell of the final feature map ``F``:

    M_c(h, w) = alpha_c · F[:, h, w]

For a head that average-pools ``F`` and applies a linear layer, ``alpha_c`` is the class row
``w_c`` of that layer and ``mean_{h,w} M_c + b_c`` is exactly the class logit: the CAM is *exact*.
For any other head (a norm or an MLP after pooling, a class token, a convolutional pre-logits block)
camkit uses the *head-gradient* weights ``alpha_c = d logit_c / d pooled``, the gradient of the
class logit with respect to the pooled feature vector, computed through the head only (the
features enter the head as a detached leaf, so no backbone backward is needed). On an exact head
both definitions coincide; elsewhere the map is an approximation and
[`CAMExtractor.exact`][camkit.CAMExtractor] is ``False``.

The same per-cell head gradient gives Grad-CAM, Grad-CAM++ and LayerCAM at the last feature
layer (``CAMExtractor(model, method=...)``, names in [`CAM_METHODS`][camkit.CAM_METHODS]).

Everything goes through timm's model contract — ``forward_features``, ``forward_head``,
``get_classifier``, ``output_fmt``, ``num_prefix_tokens`` and ``patch_embed`` grids — never
through hooks or hand-named layers.
"""

from camkit.cam._contract import frozen_state
from camkit.cam._extractor import CAMExtractor, CAMOutput
from camkit.cam._maps import cell_sums, normalize_cams, upsample_cams
from camkit.cam._methods import CAM_METHODS

__all__ = [
    "CAM_METHODS",
    "CAMExtractor",
    "CAMOutput",
    "cell_sums",
    "frozen_state",
    "normalize_cams",
    "upsample_cams",
]
