"""The runner's datasets, chosen by name: splits resident in memory, augmentation, model input.

A dataset is a function ``load(recipe, cache) -> Data`` registered in `DATASETS` with the recipe it
is trained with by default (`recipes.py`). Adding one is a function here and a recipe there:

- ``site-B``: COVID-CT, the official train/val/test split (``camkit.datasets.COVIDCT``);
- ``site-A``: the SARS-CoV-2 CT-scan dataset split in contiguous blocks of file numbers (patients
  kept apart; ``Recipe.split``), 5 folds, the fold chosen by the run's seed;
- ``covidx``: COVIDx-CT from its list files (three classes);
- ``digits``: MNIST (10,000 training digits, 5,000 validation digits, a fixed draw) tested on
  USPS (framed like MNIST) and MNIST-M;
- ``folder:PATH``: a user's images, ``PATH/{train,val,test}/<class>/<image>``, read and trained
  as the CT sites (`dataset_loader`);
- ``adrenal3d``: AdrenalMNIST3D's volumes (shape masks, not CT intensities), in
  `benchmarks.runner.volumes`.

Images are decoded once into uint8 tensors (CT: cached in the run folder, keyed by size, path,
length and mtime) and stay on the device; `Data.to_input` turns a batch into the model input.
The one data-root lookup of the project is `data_root`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.runner.io import atomic_save, load_checkpoint

Split = tuple[torch.Tensor, torch.Tensor]


def data_root() -> Path | None:
    """``CAMKIT_DATA`` if set, else the nearest ``shared/data`` above the repository, else None.

    The one data-root lookup of the benchmarks and the tests.
    """
    if os.environ.get("CAMKIT_DATA"):
        return Path(os.environ["CAMKIT_DATA"]).expanduser()
    found = (p / "shared" / "data" for p in Path(__file__).resolve().parents)
    return next((p for p in found if p.is_dir()), None)


def data_folder(explicit: Path | None, name: str, what: str) -> Path:
    """``explicit``, else ``data_root() / name``; a missing folder names ``what`` to pass."""
    if explicit is not None:
        return Path(explicit)
    root = data_root()
    if root is None:
        raise FileNotFoundError(
            f"{what}: not given, and no shared/data folder was found above the repository "
            f"(set CAMKIT_DATA or pass {what} PATH)"
        )
    return root / name


@dataclass
class Data:
    """A dataset in memory, ready for the loop.

    Attributes:
        train: ``(images, labels)``, images as stored (uint8 CT at the training size, float digits).
        val: the validation split (selection and the recipe choice read only it), or ``None``.
        tests: ``{name: split}`` test sets; the name becomes the result row's ``dataset``.
        num_classes: ``K``.
        class_names: one name per class.
        positive: the positive class of precision/recall/F1 (``None``: macro over the classes).
        to_input: a stored batch → the normalised model input (float, ``img_size``).
        augment: a stored training batch → the augmented model input (random, torch's RNG).
        mask_value: what the TTA fills masked cells with, in the model's input space.
        info: what the rows do not record (paths); ``body_share``: the test images are CT slices,
            and each row gets the share of CAM mass inside the body (`benchmarks.runner.cams`).
    """

    train: Split
    val: Split | None
    tests: dict[str, Split]
    num_classes: int
    class_names: tuple[str, ...]
    positive: int | None
    to_input: Callable[[torch.Tensor], torch.Tensor]
    augment: Callable[[torch.Tensor], torch.Tensor]
    mask_value: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def first_n_per_class(targets: list[int], n: int | None) -> list[int]:
    """Indices of the first ``n`` samples of every class, in order (all when ``n`` is None)."""
    seen: dict[int, int] = {}
    keep = []
    for i, label in enumerate(targets):
        seen[label] = seen.get(label, 0) + 1
        if n is None or seen[label] <= n:
            keep.append(i)
    return keep


# -- CT images: decoded once, cached ---------------------------------------------------------


class ImageCache:
    """Decoded, resized uint8 images in one ``.pt`` file, keyed by size, path, length and mtime."""

    def __init__(self, path: Path, log: Callable[[str], None] = print):
        self.path, self.log, self.dirty, self.items = path, log, False, {}
        if path.is_file():
            try:
                self.items = dict(load_checkpoint(path, required=("items",))["items"])
            except ValueError as err:
                log(f"ignoring the image cache: {err}")

    def images(self, dataset: Any, indices: list[int], size: int, workers: int = 2) -> torch.Tensor:
        """``(N, 3, size, size)`` uint8 images of ``dataset`` (squashed, bilinear)."""

        def key(i: int) -> str:
            path = dataset.samples[i][0]
            stat = os.stat(path)
            return f"{size}|{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"

        def decode(i: int) -> torch.Tensor:
            image = dataset[i][0].resize((size, size), Image.Resampling.BILINEAR)
            return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)

        keys = [key(i) for i in indices]
        missing = [(i, k) for i, k in zip(indices, keys, strict=True) if k not in self.items]
        with ThreadPoolExecutor(workers) as pool:
            decoded = pool.map(decode, [i for i, _ in missing])
            for (_, k), image in zip(missing, decoded, strict=True):
                self.items[k] = image.contiguous()
        self.dirty |= bool(missing)
        self.log(
            f"  {len(keys)} images at {size}×{size}: {len(keys) - len(missing)} from cache, "
            f"{len(missing)} decoded"
        )
        if not keys:
            return torch.empty(0, 3, size, size, dtype=torch.uint8)
        return torch.stack([self.items[k] for k in keys])

    def save(self) -> None:
        if self.dirty:
            atomic_save({"version": 1, "items": self.items}, self.path)


def _ct_input(mean, std, img_size: int, device: torch.device):
    """uint8 CT batches → normalised input, and the training augmentation (crop and flips)."""
    import kornia.augmentation as K

    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def normalize(x: torch.Tensor) -> torch.Tensor:
        x = (x - mean_t) / std_t
        return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x

    augment = torch.nn.Sequential(
        K.RandomCrop((img_size, img_size), cropping_mode="resample"),
        K.RandomHorizontalFlip(),
        K.RandomVerticalFlip(),
    ).to(device)
    return (
        lambda x: normalize(x.float() / 255),
        lambda x: normalize(augment(x.float() / 255)),
    )


def _ct_data(
    datasets: dict, name: str, classes: tuple[str, ...], recipe, cache: ImageCache, device, info
) -> Data:
    """A CT dataset's splits decoded (cached), resident on ``device``, with the CT input."""
    splits = {}
    for split, ds in datasets.items():
        n = recipe.train_subset if split == "train" else recipe.test_subset
        keep = first_n_per_class(ds.targets, n)
        size = round(recipe.img_size * 256 / 224) if split == "train" else recipe.img_size
        images = cache.images(ds, keep, size)
        labels = torch.tensor([ds.targets[i] for i in keep], dtype=torch.long)
        splits[split] = (images.to(device), labels.to(device))
    cache.save()
    to_input, augment = _ct_input(recipe.mean, recipe.std, recipe.img_size, device)
    return Data(
        train=splits["train"],
        val=splits.get("val"),
        tests={name: splits["test"]},
        num_classes=len(classes),
        class_names=classes,
        positive=1 if len(classes) == 2 else None,
        to_input=to_input,
        augment=augment,
        info=info,
    )


def _cache(cache_dir: Path, site: str, recipe, log) -> ImageCache:
    return ImageCache(cache_dir / f"cache_{site}_{recipe.img_size}.pt", log)


def load_site_b(recipe, options, cache_dir: Path, device, log) -> Data:
    from camkit.datasets import COVIDCT

    root = data_folder(options.get("data"), "COVID-CT", "--data")
    log(f"site B: {root}")
    datasets = {s: COVIDCT(root, split=s) for s in ("train", "val", "test")}
    cache = _cache(cache_dir, "B", recipe, log)
    classes = ("NonCOVID", "COVID")
    info = {"root": str(root), "body_share": True}
    return _ct_data(datasets, "site-B", classes, recipe, cache, device, info)


def parse_split(split: str | None, seed: int) -> dict[str, Any]:
    """``"SCHEME:FOLDS"`` and a seed → ``SARSCoV2CT``'s split arguments (the fold: seed mod FOLDS).

    The seed also seeds ``"leaky-random"``'s shuffle, so each of its folds is its own draw.
    """
    scheme, _, folds = (split or "patient-blocks:5").partition(":")
    if scheme not in ("patient-blocks", "leaky-random") or not folds.isdigit() or int(folds) < 3:
        raise ValueError(
            f"--split: expected patient-blocks:FOLDS or leaky-random:FOLDS with FOLDS >= 3, "
            f"got {split!r}"
        )
    out: dict[str, Any] = {"scheme": scheme, "folds": int(folds), "fold": seed % int(folds)}
    if scheme == "leaky-random":
        out["seed"] = seed
    return out


def load_site_a(recipe, options, cache_dir: Path, device, log, seed: int = 0) -> Data:
    """Site A split by `parse_split` (``recipe.split``; the fold is ``seed`` mod the folds)."""
    from camkit.datasets import SARSCoV2CT

    root = data_folder(options.get("data"), "SARS-CoV-2-CT", "--data")
    if not root.is_dir():
        raise FileNotFoundError(
            f"--data: the SARS-CoV-2 CT-scan dataset (site A) is not at {root}; download it "
            "(COVID/, non-COVID/) and pass --data"
        )
    split = parse_split(recipe.split, seed)
    log(f"site A: {root} ({split})")
    datasets = {s: SARSCoV2CT(root, split=s, **split) for s in ("train", "val", "test")}
    cache = _cache(cache_dir, "A", recipe, log)
    classes = ("NonCOVID", "COVID")
    info = {"root": str(root), "split": split, "body_share": True}
    return _ct_data(datasets, "site-A", classes, recipe, cache, device, info)


def load_covidx(recipe, options, cache_dir: Path, device, log) -> Data:
    from camkit.datasets import COVIDxCT

    root = data_folder(options.get("data"), "COVIDx-CT", "--data")
    lists = Path(options.get("covidx_lists") or root)
    version = options.get("covidx_version") or "3A"
    log(f"COVIDx-CT: {root} (lists {lists}, version {version})")
    datasets = {
        s: COVIDxCT(root, lists / f"{s}_COVIDx_CT-{version}.txt") for s in ("train", "val", "test")
    }
    cache = _cache(cache_dir, "X", recipe, log)
    classes = ("Normal", "Pneumonia", "COVID-19")
    info = {"root": str(root), "lists": str(lists), "version": version}
    return _ct_data(datasets, "covidx", classes, recipe, cache, device, info)


# -- digits ------------------------------------------------------------------------------------

DIGIT_DRAW_SEED = 1234  # the fixed draw of the 10,000 training and 5,000 validation digits
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def load_digits(recipe, options, cache_dir: Path, device, log) -> Data:
    """MNIST → USPS / MNIST-M at ``img_size`` (see the module doc)."""
    import kornia.augmentation as K

    from camkit.datasets import frame_like_mnist, mnist, mnist_m, usps

    root = data_folder(options.get("data"), "", "--data")
    log(f"digits: {root}")
    train = mnist(root / "mnist.npz")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(DIGIT_DRAW_SEED))
    n_train, n_val = recipe.train_digits, recipe.val_digits
    images = train.images.float().div(255)[:, None]
    picked = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
    }
    split = {name: (images[idx], train.labels[idx]) for name, idx in picked.items()}
    test = usps(root / "usps.npz", train=False)
    tests = {"mnist-usps": (frame_like_mnist(test.images.float().div(255)[:, None]), test.labels)}
    mm = mnist_m(root / "mnist.npz", root / "BSDS500" / "images" / "train", cache_dir / "mnist_m")
    tests["mnist-mnistm"] = (
        torch.from_numpy(mm["x_test"]).permute(0, 3, 1, 2).float().div(255),
        torch.from_numpy(mm["y_test"].astype(np.int64)),
    )
    if recipe.test_subset is not None:

        def cut(s: Split) -> Split:
            keep = first_n_per_class(s[1].tolist(), recipe.test_subset)
            return s[0][keep], s[1][keep]

        split["val"] = cut(split["val"])
        tests = {k: cut(v) for k, v in tests.items()}
    if recipe.train_subset is not None:
        keep = first_n_per_class(split["train"][1].tolist(), recipe.train_subset)
        split["train"] = split["train"][0][keep], split["train"][1][keep]
    size, mean, std = recipe.img_size, recipe.mean, recipe.std

    def to_input(x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = (x - mean[0]) / std[0]
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    affine = K.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), p=1.0)
    to_device = {k: (x.to(device), y.to(device)) for k, (x, y) in tests.items()}
    return Data(
        train=(split["train"][0].to(device), split["train"][1].to(device)),
        val=(split["val"][0].to(device), split["val"][1].to(device)),
        tests=to_device,
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
        positive=None,
        to_input=to_input,
        augment=lambda x: to_input(affine(x)),
        info={"root": str(root)},
    )


# -- a user's folder ---------------------------------------------------------------------------

FOLDER = "folder:"  # --dataset folder:PATH


def load_folder(recipe, options, cache_dir: Path, device, log, *, path: str) -> Data:
    """``PATH/{train,val,test}/<class>/<image>`` (``camkit.datasets.SplitImageFolder``), as CT.

    The rows' dataset is ``folder:<name of PATH>``; with two classes the second (sorted) class
    folder is the positive class of precision, recall and F1.
    """
    from camkit.datasets import SplitImageFolder

    root = Path(path).expanduser()
    log(f"folder: {root}")
    datasets = {s: SplitImageFolder(root, split=s) for s in ("train", "val", "test")}
    classes = tuple(datasets["train"].classes)
    cache = _cache(cache_dir, "folder", recipe, log)
    name = f"{FOLDER}{root.resolve().name}"
    return _ct_data(datasets, name, classes, recipe, cache, device, {"root": str(root)})


def load_adrenal3d(recipe, options, cache_dir: Path, device, log) -> Data:
    """AdrenalMNIST3D: `benchmarks.runner.volumes.load_adrenal3d` (imported when used)."""
    from benchmarks.runner import volumes

    return volumes.load_adrenal3d(recipe, options, cache_dir, device, log)


DATASETS: dict[str, Callable[..., Data]] = {
    "site-B": load_site_b,
    "site-A": load_site_a,
    "covidx": load_covidx,
    "digits": load_digits,
    "adrenal3d": load_adrenal3d,
}


def dataset_loader(name: str) -> Callable[..., Data]:
    """The loader of a dataset name: one of `DATASETS`, or ``folder:PATH`` (`load_folder`)."""
    if name.startswith(FOLDER) and len(name) > len(FOLDER):
        return partial(load_folder, path=name[len(FOLDER) :])
    if name not in DATASETS:
        raise ValueError(
            f"--dataset: expected one of {', '.join(sorted(DATASETS))} or folder:PATH "
            f"(PATH/train, val, test/<class>/), got {name!r}"
        )
    return DATASETS[name]
