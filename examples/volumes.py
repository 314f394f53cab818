"""Tutorial: a MONAI 3-D DenseNet121 on AdrenalMNIST3D volumes with camkit, CAMs in 3-D.

The data are **shape masks, not CT intensities**: AdrenalMNIST3D (MedMNIST v2, CC BY 4.0) holds
64³ binary masks of adrenal glands segmented from abdominal CT (voxel 1: gland, 0: background),
normal (0) or with a mass (1). The model learns gland shapes; it never sees a CT value. The
file reads top to bottom like the other two: 1. the data, 2. a MONAI model, 3. camkit's
training step (SnapMix on volumes and the contrastive patch loss over 3-D cells), 4. a short
loop, 5. the evaluation, plain and with the CAM-masking TTA (measured), 6. a figure of CAM slices.

Why the 64³ file: DenseNet121 divides each side by 32, so 64³ keeps a 2 × 2 × 2 final feature
map. The 28³ file (``adrenalmnist3d.npz``) would leave 1 × 1 × 1: a CAM of one cell is one number
per class and says nothing about where.

DenseNet121 at 64³ is slow on a CPU: one training step of 8 volumes with SnapMix and the CPE
took 9-30 s on a shared 2-core CPU. By default this trains on 16 volumes of each class for 2
epochs and tests on 8 of each, a few minutes, to show the steps; the numbers of that run mean
nothing (a model that has seen 32 volumes twice). The full official split (1,188 training and
298 test volumes) takes 20-70 minutes an epoch on such a CPU, 7-23 hours for these 20:

    python examples/volumes.py                                        # a few minutes on a CPU
    python examples/volumes.py --train-subset 0 --test-subset 0 --epochs 20   # the full split
    python examples/volumes.py --mix cutmix --cpe none                # other recipes
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from monai.networks.nets import DenseNet121
from tqdm.auto import tqdm

import camkit
from camkit import CAMMaskingTTA, ContrastivePatchLoss, CutMix, Mixup, SnapMix, TrainStep
from camkit.datasets import MedMNIST

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])


def at_least(low: int):  # an int option's type: one-line errors naming the option
    def parse(text: str) -> int:
        if not text.lstrip("-").isdigit() or int(text) < low:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {text}")
        return int(text)

    return parse


p.add_argument("--data", type=Path, help="folder of adrenalmnist3d_64.npz ($CAMKIT_DATA/MedMNIST)")
p.add_argument("--mix", choices=("none", "snapmix", "cutmix", "mixup"), default="snapmix")
p.add_argument("--cpe", choices=("none", "norm", "paper"), default="norm")
p.add_argument("--train-subset", type=at_least(0), default=16, help="volumes per class; 0: all")
p.add_argument("--test-subset", type=at_least(0), default=8, help="volumes per class; 0: all")
p.add_argument("--epochs", type=at_least(0), default=2)
p.add_argument("--batch-size", type=at_least(2), default=8)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--tta-copies", type=at_least(1), default=7, help="masked copies per volume")
p.add_argument("--out", type=Path, default=Path("runs/volumes"))
p.add_argument("--seed", type=int, default=0)
p.add_argument("--quiet", action="store_true", help="no progress bars")
args = p.parse_args()
if not 0 < args.lr < float("inf"):
    p.error(f"--lr: expected a finite value > 0, got {args.lr}")
torch.manual_seed(args.seed)

# 1. Data: the official split of the 64³ file (MD5 checked), the first N volumes of each class --
root = args.data or Path(os.environ.get("CAMKIT_DATA", Path(__file__).parents[2] / "shared/data"))
path = (root if args.data else root / "MedMNIST") / "adrenalmnist3d_64.npz"
if not path.is_file():
    p.error(f"--data: no adrenalmnist3d_64.npz in {path.parent} (pass --data or set CAMKIT_DATA)")


def load(split: str, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    ds = MedMNIST(path, split, check_md5=True)  # uint8 (N, 1, 64, 64, 64), voxels 0 or 255
    if per_class == 0:
        return ds.images, ds.labels
    keep = torch.cat([(ds.labels == c).nonzero()[:per_class, 0] for c in (0, 1)])
    return ds.images[keep], ds.labels[keep]


train_x, train_y = load("train", args.train_subset)
test_x, test_y = load("test", args.test_subset)
classes = ("normal", "mass")
print(f"AdrenalMNIST3D 64³ (shape masks of adrenal glands from CT, not CT intensities): "
      f"train {len(train_y)}, test {len(test_y)} volumes")  # fmt: skip


def to_input(volumes: torch.Tensor) -> torch.Tensor:  # uint8 masks → float 0 or 1
    return volumes.float() / 255


def flip(x: torch.Tensor) -> torch.Tensor:  # mirror each volume along each axis, p = 1/2
    for axis in (2, 3, 4):
        x = torch.where(torch.rand(len(x), 1, 1, 1, 1) < 0.5, x.flip(axis), x)
    return x


# 2. Model: MONAI's 3-D DenseNet121 from scratch; camkit's MONAI adapter presents it to every
#    part (CAMs from the training forward, the mixes, the CPE, the TTA): nothing to configure
model = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)

# 3. camkit's training step on volumes: the mix draws cuboids (SnapMix weights its labels by the
#    3-D CAMs), the contrastive patch loss compares the 2 × 2 × 2 cells of the feature map
mix = {"none": None, "snapmix": SnapMix(2), "cutmix": CutMix(2), "mixup": Mixup(2)}[args.mix]
cpe = {"none": None, "norm": ContrastivePatchLoss(), "paper": ContrastivePatchLoss.paper()}
step = TrainStep(model, mix=mix, cpe=cpe[args.cpe])

# 4. Training: Adam, cosine schedule, random flips; the last epoch is kept (no validation here)
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-5)
batches = len(train_y) // args.batch_size
schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, args.epochs * batches))
start = time.perf_counter()
model.train()
for _ in tqdm(range(args.epochs), desc="epochs", disable=args.quiet):
    order = torch.randperm(len(train_y))
    for i in range(batches):  # full batches only
        idx = order[i * args.batch_size : (i + 1) * args.batch_size]
        out = step(flip(to_input(train_x[idx])), train_y[idx])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        schedule.step()
seconds = time.perf_counter() - start
print(f"trained {args.epochs} epochs in {seconds:.0f} s ({args.mix}, CPE {args.cpe})")
model.eval()

# 5. Evaluation: plain, and with the CAM-masking TTA (the paper's vote) as a measurement: the
#    masked cells are 8³ cubes set to the background (0), in the order of the 3-D CAM's mass
metrics = camkit.classification_metrics(2, positive_class=1, class_names=classes)
tta = CAMMaskingTTA(model, k=args.tta_copies, theta=0.2, patch_size=8, mask_value=0.0)
rows = {}
for name, vote in (("plain", None), ("+ CAM-masking TTA (measured)", tta)):
    metrics.reset()
    rows[name] = camkit.evaluate(
        model, test_x, test_y, metrics, batch_size=8, transform=to_input, tta=vote
    )
print(f"\nAdrenalMNIST3D test set ({len(test_y)} volumes, shape masks), DenseNet121 3-D, "
      f"mix {args.mix}, CPE {args.cpe}; positive class: mass")  # fmt: skip
print("| evaluation | accuracy | precision | recall | F1 |\n|---|---:|---:|---:|---:|")
for name, v in rows.items():
    cells = " | ".join(f"{100 * v[k]:.2f}" for k in ("accuracy", "precision", "recall", "f1"))
    print(f"| {name} | {cells} |")
v = rows["+ CAM-masking TTA (measured)"]
print(f"TTA: {v['tta_forwards']:.1f} forwards per volume, {v['tta_flipped']} labels flipped")

# 6. A figure: the first test volume with a mass, both classes' CAMs upsampled trilinearly,
#    as the axial, coronal and sagittal slices through each map's peak and a projection
i = int((test_y == 1).nonzero()[0, 0])
x = to_input(test_x[i : i + 1])
with torch.no_grad():
    pred = int(model(x).argmax(1))
cams = tta.extractor.forward_frozen(x, torch.tensor([[0, 1]])).cams[0]  # (2, 2, 2, 2)
title = f"test volume {i} (a shape mask), label mass, predicted {classes[pred]}"
figure = camkit.volume_figure(x[0], cams, names=[f"CAM of {c}" for c in classes], title=title)
print(f"figure: {camkit.save_figure(figure, args.out / 'volume_cams.png')}")
