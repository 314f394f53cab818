"""Datasets used by the camkit examples and benchmarks.

Image datasets follow the torchvision convention: ``dataset[i]`` returns ``(image, label)``, where
``image`` is a PIL RGB image passed through ``transform`` when one is given.

- `COVIDCT`: UCSD COVID-CT ("site B") with its official train/val/test lists.
- `SARSCoV2CT`: the SARS-CoV-2 CT-scan dataset ("site A"), split in contiguous blocks of file
  numbers so that patients stay on one side (5 folds).
- `COVIDxCT`: COVIDx-CT, read from its ``<file> <class> <box>`` list files.
- `SplitImageFolder`: your own images, ``root/{train,val,test}/<class>/<image>``.
- `load_digits_npz`, `DigitsDataset`, `mnist`, `usps`: digit datasets as float tensors in
  ``[0, 1]``; `frame_like_mnist` puts USPS digits in MNIST's 20-in-28 frame.
- `build_mnist_m`, `mnist_m`: MNIST-M built from MNIST and BSDS500 photographs.
- `MedMNIST`, `medmnist`: the official MedMNIST ``.npz`` files (2-D images and 3-D volumes;
  the 3-D sets are shape masks, not CT intensities), checked against `MEDMNIST_MD5` on request.

Every loader takes the paths it reads as arguments: camkit does not look for a data folder.

Every loader checks its inputs up front. A missing folder or file, an unknown split, an empty split,
a name in a list that is not on disk and a malformed list line all raise ``FileNotFoundError`` or
``ValueError``. The message names the file, and the line number for list files. Nothing is skipped
silently. An image that cannot be decoded raises ``OSError`` naming the file when it is loaded.
"""

from camkit.datasets._io import IMAGE_EXTENSIONS
from camkit.datasets.covid import COVIDCT, COVIDxCT
from camkit.datasets.digits import DigitsDataset, frame_like_mnist, load_digits_npz, mnist, usps
from camkit.datasets.folder import SplitImageFolder
from camkit.datasets.medmnist import MEDMNIST_MD5, MedMNIST, medmnist
from camkit.datasets.mnist_m import build_mnist_m, mnist_m
from camkit.datasets.sars import SARSCoV2CT

__all__ = [
    "COVIDCT",
    "IMAGE_EXTENSIONS",
    "MEDMNIST_MD5",
    "COVIDxCT",
    "DigitsDataset",
    "MedMNIST",
    "SARSCoV2CT",
    "SplitImageFolder",
    "build_mnist_m",
    "frame_like_mnist",
    "load_digits_npz",
    "medmnist",
    "mnist",
    "mnist_m",
    "usps",
]
