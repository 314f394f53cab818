"""Write a compact copy of COVID-CT (site B) for a GPU machine that cannot read ../shared/data.

Same layout and file names (split lists unchanged); every image resized to ``--size`` square and
re-encoded as JPEG quality 95 (Pillow reads it whatever the extension). The example pipeline resizes
to 256² (train) and 224² (test) anyway; this only changes the resampling path slightly.

    python benchmarks/make_gpu_data.py --src ../shared/data/COVID-CT --dst .gpu_data/COVID-CT
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--dst", type=Path, required=True)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    shutil.copytree(args.src / "Data-split", args.dst / "Data-split", dirs_exist_ok=True)
    count = 0
    for folder in ("CT_COVID", "CT_NonCOVID"):
        (args.dst / folder).mkdir(parents=True, exist_ok=True)
        for path in sorted((args.src / folder).iterdir()):
            with Image.open(path) as image:
                small = image.convert("RGB").resize((args.size, args.size), Image.BILINEAR)
            small.save(args.dst / folder / path.name, format="JPEG", quality=95)
            count += 1
    print(f"wrote {count} images to {args.dst}")


if __name__ == "__main__":
    main()
