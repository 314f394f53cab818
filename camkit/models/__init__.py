"""Any classifier through one contract: timm's, with adapters for the families camkit knows.

camkit reads one model contract, timm's: ``forward_features`` (the final feature map or
tokens), ``forward_head`` (the logits), ``get_classifier``, ``num_classes`` and, for token
models, ``num_prefix_tokens`` and a ``patch_embed`` grid. Every timm classifier has it. For
other models this sub-package holds the adapters, and nothing else in camkit looks past them:

- torchvision: ResNet, ResNeXt, Wide ResNet, DenseNet, EfficientNet v1/v2, MobileNet v2/v3,
  ConvNeXt, RegNet, ViT, Swin;
- MONAI (2-D and 3-D): DenseNet121/169/201/264, EfficientNetBN, SENet/SEResNet/SEResNext,
  ResNet, ViT (``classification=True``);
- Hugging Face: ``ResNetForImageClassification``, ``RegNetForImageClassification``,
  ``ConvNextForImageClassification``, ``ConvNextV2ForImageClassification``,
  ``ViTForImageClassification``, ``SwinForImageClassification``;
- any other classifier by its split: [`as_classifier`][camkit.as_classifier]``(model,
  features=..., head=...)``.

An adapter holds the model (not a copy: its parameters are the model's) and replays the
model's own forward, so its logits equal the model's bit for bit. Detection is automatic:
[`CAMExtractor`][camkit.CAMExtractor], [`TrainStep`][camkit.TrainStep] and
[`CAMMaskingTTA`][camkit.CAMMaskingTTA] take the model as it is.

Adding a family: one private module with an ``adapt(model)`` function returning a
[`ClassifierAdapter`][camkit.ClassifierAdapter] (or ``None``), one line in ``_resolve.py``'s
``_FAMILIES``, and one entry in the contract test (``tests/test_adapters.py``).
"""

from camkit.models._base import ClassifierAdapter, unwrap_logits
from camkit.models._resolve import as_classifier, eval_module, source_model
from camkit.models._split import SplitClassifier

__all__ = [
    "ClassifierAdapter",
    "SplitClassifier",
    "as_classifier",
    "eval_module",
    "source_model",
    "unwrap_logits",
]
