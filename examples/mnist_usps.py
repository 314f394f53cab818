"""Tutorial: train on MNIST with camkit, test on digits the model never saw (USPS, MNIST-M).

The digits experiment of the paper (domain generalisation): a timm classifier trained on MNIST
only is tested on USPS and on MNIST-M. The file reads top to bottom: 1. the data, 2. a small timm
model, 3. camkit's training step, 4. a short loop, 5. the evaluation, plain and with the
CAM-masking TTA, 6. a figure. ``benchmarks/`` runs the measured version (``--dataset digits``).

    python examples/mnist_usps.py                           # plain training, minutes on a CPU
    python examples/mnist_usps.py --cpe norm                # camkit's default CPE form
    python examples/mnist_usps.py --mix snapmix --cpe paper # the paper's recipe
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import kornia.augmentation as K
import numpy as np
import timm
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import camkit
from camkit import CAMMaskingTTA, ContrastivePatchLoss, CutMix, Mixup, SnapMix, TrainStep
from camkit.datasets import build_mnist_m, frame_like_mnist, mnist, usps

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument(
    "--data", type=Path, help="folder with mnist.npz, usps.npz, BSDS500 (default: $CAMKIT_DATA)"
)
p.add_argument("--model", default="resnet10t")
p.add_argument("--mix", choices=("none", "snapmix", "cutmix", "mixup"), default="none")
# plain training by default: the recommended recipe (no camkit method beat it on validation)
p.add_argument("--cpe", choices=("none", "norm", "paper"), default="none")
p.add_argument("--train-digits", type=int, default=10_000)
p.add_argument("--test-digits", type=int, help="first N digits of each test set")
p.add_argument("--epochs", type=int, default=5)
p.add_argument("--out", type=Path, default=Path("runs/digits"))
p.add_argument("--seed", type=int, default=0)
p.add_argument("--quiet", action="store_true")
args = p.parse_args()
for name in ("train_digits", "test_digits", "epochs"):
    value, least = (
        getattr(args, name),
        0 if name == "epochs" else 128 if name == "train_digits" else 1,
    )
    if value is not None and value < least:
        p.error(f"--{name.replace('_', '-')}: expected an int >= {least}, got {value}")
if not timm.is_model(args.model):
    p.error(f"--model {args.model}: not a timm model (timm.list_models() names them)")
torch.manual_seed(args.seed)

# 1. Data: MNIST digits to train on; USPS (framed as MNIST frames its digits) and MNIST-M to test
root = args.data or Path(os.environ.get("CAMKIT_DATA", Path(__file__).parents[2] / "shared/data"))
if not (root / "mnist.npz").is_file():
    p.error(f"--data: no mnist.npz in {root} (pass --data PATH or set CAMKIT_DATA)")
train = mnist(root / "mnist.npz")
pick = torch.randperm(len(train))[: args.train_digits]
train_x, train_y = train.images[pick].float().div(255)[:, None], train.labels[pick]
target = usps(root / "usps.npz", train=False)
tests = {"USPS": (frame_like_mnist(target.images.float().div(255)[:, None]), target.labels)}
test_digits = mnist(root / "mnist.npz", train=False)  # MNIST-M: these blended into photographs
seed = int(np.random.SeedSequence(0).generate_state(2)[1])  # camkit.datasets.mnist_m's test set
cache = args.out / "mnist_m_test.npz"  # 23 MB, built once (about a minute)
photos = build_mnist_m(test_digits.images.numpy(), root / "BSDS500/images/train", seed, cache)
tests["MNIST-M"] = (
    torch.from_numpy(photos).permute(0, 3, 1, 2).float().div(255),
    test_digits.labels,
)
if args.test_digits:
    tests = {k: (x[: args.test_digits], y[: args.test_digits]) for k, (x, y) in tests.items()}


def to_input(digits: torch.Tensor) -> torch.Tensor:  # (B, 1 or 3, 28, 28) in [0, 1] → 32², RGB
    x = F.interpolate(digits, size=(32, 32), mode="bilinear", align_corners=False)
    return ((x - 0.1307) / 0.3081).expand(-1, 3, -1, -1)  # MNIST's mean and std


# 2. Model: a small ResNet whose last feature map stays 2×2 at 32² (output stride 16) -----------
model = timm.create_model(args.model, pretrained=False, num_classes=10, output_stride=16)

# 3. camkit's training step -----------------------------------------------------------------------
mix = {"none": None, "snapmix": SnapMix(10), "cutmix": CutMix(10), "mixup": Mixup(10)}[args.mix]
forms = {"none": None, "norm": ContrastivePatchLoss(), "paper": ContrastivePatchLoss.paper()}
step = TrainStep(model, mix=mix, cpe=forms[args.cpe])

# 4. Training: SGD with a one-cycle schedule, a light random affine (the last epoch is kept) ------
batch = 128
optimizer = torch.optim.SGD(
    model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
)
steps = args.epochs * (len(train_y) // batch)
schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=steps)
augment = K.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), p=1.0)
model.train()
for _ in tqdm(range(args.epochs), desc="epochs", disable=args.quiet):
    order = torch.randperm(len(train_y))
    for i in range(len(train_y) // batch):
        idx = order[i * batch : (i + 1) * batch]
        out = step(to_input(augment(train_x[idx])), train_y[idx])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        schedule.step()
model.eval()

# 5. Evaluation, plain and with the CAM-masking TTA (the arg-max vote: ten classes) ------------
metrics = camkit.classification_metrics(10, positive_class=None)
tta = CAMMaskingTTA(model, k=31, patch_size=1, rule="argmax")  # 1-pixel cells at 32²: 8 px at 224²
print(f"\nMNIST → targets, {args.model} from scratch, mix {args.mix}, CPE {args.cpe}")
print("| test set | digits | accuracy | + CAM-masking TTA | labels flipped |")
print("|---|---:|---:|---:|---:|")
for name, (x, y) in tests.items():
    plain = camkit.evaluate(model, x, y, metrics, batch_size=500, transform=to_input)["accuracy"]
    metrics.reset()
    voted = camkit.evaluate(model, x, y, metrics, batch_size=500, transform=to_input, tta=tta)
    metrics.reset()
    print(
        f"| {name} | {len(y)} | {100 * plain:.2f} | {100 * voted['accuracy']:.2f} "
        f"| {voted['tta_flipped']} |"
    )

# 6. A figure: the CAMs of the first USPS digits with label, prediction and TTA decision --------
x, y = tests["USPS"][0][:8], tests["USPS"][1][:8]
result = tta.predict(to_input(x))
cams = tta.extractor.forward_frozen(to_input(x)).cams
figure = camkit.cam_grid(
    to_input(x), cams, labels=y, preds=result.original_labels, tta_labels=result.labels,
    mean=[0.1307] * 3, std=[0.3081] * 3,
)  # fmt: skip
print(f"figure: {camkit.save_figure(figure, args.out / 'usps_cams.png')}")
