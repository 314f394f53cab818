"""The gallery's figures, from the strongest models the benchmarks trained, and where CAMs sit.

    python benchmarks/figures.py             # after benchmarks/reproduce.py --table pretrained
    python benchmarks/figures.py --volumes RUNS   # after reproduce.py --table volumes --out RUNS
    python benchmarks/figures.py --site-a RUNS    # after reproduce.py --table site-a --out RUNS

Which model each figure shows is decided by a rule written here, never by looking at tiles:

- site B: the pretrained table's recommended method (``pretrained_cpu.json``), the seed with
  the highest *validation* accuracy (ties: the lowest seed), its checkpoint in ``--runs``;
- digits: seed 0 of the digits benchmark's best method on validation, trained by the runner if
  its checkpoint is missing (the runner reproduces the benchmark's models bit for bit);
- the tiles: the first four test images of each class in the official list order (digits: the
  first of each class); the SnapMix pair: the first training image whose partner has the other
  class; the TTA figure: the tile whose vote was closest (the smallest margin between votes for
  and against; the first such); the deletion curves: the first two test images of each class;
- site A: the site-A table's recommended method (the baseline when plain training is
  recommended) on the patient-block folds, the fold with the highest validation accuracy (ties:
  the lowest), on that fold's test block, with the site-B rules for the tiles;
- volumes: the volume table's baseline, the seed with the highest validation accuracy, on the
  first test volume of the last class (a mass), every class's CAM.

It also measures, per method and seed of the pretrained table and for a from-scratch site-B
baseline (trained here by the runner, the published recipe), the **share of CAM mass inside the
body** on the 203 site-B test images (`benchmarks.runner.cams`, which the runner also records with
every row of a CT site). Results: ``benchmarks/results/cam_body_share.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

import camkit
from benchmarks.plots import shrink_png
from benchmarks.reproduce import TABLES, block_recipe
from benchmarks.runner.cams import DARK, body_mask, body_share
from benchmarks.runner.io import atomic_write_text
from benchmarks.runner.loop import make_tta, selected_weights
from benchmarks.runner.models import create_model, tta_geometry
from benchmarks.runner.recipes import RECIPES, RunConfig
from benchmarks.runner.run import Runner

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"
RAW = ROOT / "runs" / "figures" / "raw"  # the full-size figures, not committed


def best_seed(rows: list[dict], method: str, epochs: int) -> int:
    """The rule: the seed of ``method`` with the highest validation accuracy (ties: lowest)."""
    sel = [r for r in rows if r["method"] == method and r["epochs"] == epochs]
    if not sel:
        raise SystemExit(f"no {method} rows at {epochs} epochs in the results")
    return min(sel, key=lambda r: (-r["val_acc"], r["seed"]))["seed"]


def _model(cfg: RunConfig, num_classes: int):
    state = selected_weights(cfg)
    return create_model(cfg.recipe, num_classes, torch.device("cpu"), state=state).eval()


def gallery(cfg: RunConfig, data, out: Path, stem: str, names: list[str]) -> list[Path]:
    """The four figures of one model: CAMs, SnapMix, TTA, deletion curves."""
    model = _model(cfg, data.num_classes)
    x_all, y_all = data.tests[next(iter(data.tests))]
    per_class = 4 if data.num_classes == 2 else 1
    keep = [
        i for c in range(data.num_classes) for i in (y_all == c).nonzero()[:per_class, 0].tolist()
    ]
    x = data.to_input(x_all[keep])
    tta = make_tta(cfg, model, "argmax" if data.num_classes > 2 else None)  # K > 2: arg-max
    result = tta.predict(x)
    cams = tta.extractor.forward_frozen(x).cams
    style = {"class_names": data.class_names, "mean": cfg.recipe.mean, "std": cfg.recipe.std}
    figures = {
        "cams": camkit.cam_grid(
            x,
            cams,
            labels=y_all[keep],
            preds=result.original_labels,
            tta_labels=result.labels,
            names=[names[i] for i in keep] if names else None,
            ncols=4 if per_class > 1 else 5,
            **style,
        )
    }
    margin = (result.votes_for - result.votes_against).abs()
    index = int(margin.argmin())  # the closest vote: the copies show most
    figures["tta"] = camkit.tta_figure(x, result, tta, index=index, **style)
    patch, cells, _ = tta_geometry(cfg.recipe.img_size, cfg.recipe.tta_k)
    deep = camkit.CAMMaskingTTA(model, k=min(cells, cells // 2), patch_size=patch, early_exit=False)
    shown = [i for c in range(data.num_classes) for i in (y_all == c).nonzero()[:2, 0].tolist()]
    shown = shown[:4]
    curve = camkit.deletion_curve(deep.predict(data.to_input(x_all[shown])), cells)
    legend = [
        f"{names[i] if names else f'test {i}'} ({data.class_names[int(y_all[i])]})" for i in shown
    ]
    figures["deletion"] = camkit.deletion_figure(
        curve,
        labels=legend,
        title="Deletion: the most relevant cells masked first",
    )
    x_train, y_train = data.train
    crop = cfg.recipe.img_size
    batch = [i for c in range(data.num_classes) for i in (y_train == c).nonzero()[:16, 0].tolist()]
    images = data.to_input(x_train[batch][:, :, :crop, :crop])  # the first 16 of each class
    labels_train = y_train[batch]
    train_cams = tta.extractor.forward_frozen(images, labels_train).cams
    params = camkit.SnapMix(data.num_classes, generator=torch.Generator().manual_seed(0)).sample(
        len(labels_train), crop, crop
    )
    differ = (labels_train != labels_train[params.perm]).nonzero()[:, 0]
    pick = int(differ[0]) if len(differ) else 0  # a pair of different classes
    figures["snapmix"] = camkit.snapmix_figure(
        images, labels_train, train_cams, params, index=pick, **style
    )
    written = []
    for name, fig in figures.items():
        raw = camkit.save_figure(fig, RAW / f"gallery_{stem}_{name}.png")
        written.append(shrink_png(raw, out / f"gallery_{stem}_{name}.png", max_width=1000))
    return written


def volume_gallery(rows: list[dict], runs: Path, out: Path) -> Path:
    """The volume table's baseline (the seed of the best validation accuracy) on the first test
    volume of the last class (a mass): each class's CAM through its peak, and a projection."""
    _, blocks = TABLES["volumes"]
    recipe = block_recipe(blocks[0])
    seed = best_seed(rows, "baseline", recipe.epochs)
    cfg = RunConfig("adrenal3d", "baseline", seed, recipe, runs / blocks[0].folder)
    data = Runner(runs / "figures.json", torch.device("cpu")).data(cfg)
    model = _model(cfg, data.num_classes)
    x_all, y_all = data.tests[next(iter(data.tests))]
    index = int((y_all == data.num_classes - 1).nonzero()[0, 0])
    x = data.to_input(x_all[index : index + 1])
    every_class = torch.arange(data.num_classes)[None]
    result = camkit.CAMExtractor(model).forward_frozen(x, every_class)
    probs = result.logits.softmax(1)[0]
    names = [f"{c} (p = {float(q):.2f})" for c, q in zip(data.class_names, probs, strict=True)]
    truth = data.class_names[int(y_all[index])]
    fig = camkit.volume_figure(
        x[0],
        result.cams[0],
        names=names,
        title=f"AdrenalMNIST3D test volume {index} ({truth}; shape masks, not CT intensities),"
        f" baseline seed {seed}: each class's CAM through its peak (+)",
    )
    raw = camkit.save_figure(fig, RAW / "gallery_adrenal3d_cams.png")
    return shrink_png(raw, out / "gallery_adrenal3d_cams.png", max_width=1000)


def site_a_model(results: dict, split: str, epochs: int) -> tuple[str, int]:
    """The rule for site A's figures: the recommended method (the baseline when plain training
    is recommended or nothing is), the fold of its best validation accuracy among the rows of
    ``split`` (the leaking split's baseline rows are not candidates)."""
    method = results.get("recommended") or "baseline"
    rows = [r for r in results["rows"] if r["settings"].get("split") == split]
    return method, best_seed(rows, method, epochs)


def site_a_gallery(results: dict, runs: Path, out: Path) -> list[Path]:
    """The four gallery figures of the site-A table's recommended method (plain training: the
    baseline), the patient-block fold with the best validation accuracy, on its test block."""
    from camkit.datasets import SARSCoV2CT

    _, blocks = TABLES["site-a"]
    block = blocks[0]  # the patient-block folds; the leaking split's rows are another block
    recipe = block_recipe(block)
    method, seed = site_a_model(results, recipe.split, recipe.epochs)
    cfg = RunConfig("site-A", method, seed, recipe, runs / block.folder)
    data = Runner(runs / "figures.json", torch.device("cpu")).data(cfg)
    root = Path(data.info["root"])
    split = data.info["split"]
    names = [p.name for p, _ in SARSCoV2CT(root, split="test", **split).samples]
    return gallery(cfg, data, out, "site_a", names)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results",
        type=Path,
        help="the table's results (default: benchmarks/results/pretrained_cpu.json, with "
        "--site-a site_a_cpu.json)",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=ROOT / "runs" / "reproduce",
        help="the folder of the pretrained table's checkpoints (reproduce.py's --out)",
    )
    parser.add_argument("--scratch", type=Path, default=ROOT / "runs" / "figures")
    parser.add_argument("--out", type=Path, default=FIGURES)
    parser.add_argument("--table", type=Path, default=RESULTS / "cam_body_share")
    only = parser.add_mutually_exclusive_group()
    only.add_argument(
        "--volumes",
        type=Path,
        metavar="RUNS",
        help="draw only the volume figure, from the volume table's checkpoints in RUNS "
        "(reproduce.py --table volumes --out RUNS)",
    )
    only.add_argument(
        "--site-a",
        type=Path,
        metavar="RUNS",
        help="draw only the site-A figures, from the site-A table's checkpoints in RUNS "
        "(reproduce.py --table site-a --out RUNS)",
    )
    args = parser.parse_args(argv)
    if args.site_a is not None:
        path = args.results or RESULTS / "site_a_cpu.json"
        written = site_a_gallery(json.loads(path.read_text()), args.site_a, args.out)
        print("\n".join(f"wrote {w}" for w in written))
        return written
    if args.volumes is not None:
        rows = json.loads((RESULTS / "adrenal3d_cpu.json").read_text())["rows"]
        written = [volume_gallery(rows, args.volumes, args.out)]
        print(f"wrote {written[0]}")
        return written
    torch.manual_seed(0)
    data_all = json.loads((args.results or RESULTS / "pretrained_cpu.json").read_text())
    rows = [r for r in data_all["rows"] if r["dataset"] == "site-B"]
    _, blocks = TABLES["pretrained"]
    main_block = blocks[0]
    recipe = block_recipe(main_block)
    folder = args.runs / main_block.folder
    method = data_all.get("recommended") or "baseline"
    seed = best_seed(rows, method, recipe.epochs)
    runner = Runner(args.scratch / "results.json", torch.device("cpu"))
    cfg = RunConfig("site-B", method, seed, recipe, folder)
    data = runner.data(cfg)
    from benchmarks.runner.data import data_folder
    from camkit.datasets import COVIDCT

    names = [
        Path(p).name for p, _ in COVIDCT(data_folder(None, "COVID-CT", "--data"), "test").samples
    ]
    written = gallery(cfg, data, args.out, "covid", names)

    # where the CAMs sit: every model of the pretrained table, and a from-scratch baseline
    x_test, _ = data.tests["site-B"]
    area = float(body_mask(x_test).float().mean())
    table: dict[str, list[float]] = {}
    for row in sorted(rows, key=lambda r: (r["epochs"], r["method"], r["seed"])):
        if camkit_tta(row):
            continue
        block = next(b for b in blocks if dict(b.changes)["epochs"] == row["epochs"])
        run = RunConfig(
            "site-B", row["method"], row["seed"], block_recipe(block), args.runs / block.folder
        )
        share = float(body_share(_model(run, 2), data, x_test).mean())
        table.setdefault(f"{row['method']} ({row['epochs']} epochs, pretrained)", []).append(share)
    scratch = RunConfig("site-B", "baseline", 0, RECIPES["site-B"], args.scratch / "site_b_scratch")
    scratch_rows = runner.run(scratch)
    scratch_data = runner.data(scratch)
    shares = body_share(_model(scratch, 2), scratch_data, scratch_data.tests["site-B"][0])
    table["baseline (20 epochs, from scratch, resnet18 112²)"] = [float(shares.mean())]
    digits_cfg = RunConfig("digits", "cpe_norm", 0, RECIPES["digits"], args.scratch / "digits")
    runner.run(digits_cfg)
    digits_data = runner.data(digits_cfg)
    names_digits = []
    written += gallery(digits_cfg, digits_data, args.out, "digits", names_digits)

    lines = [
        "# Share of CAM mass inside the body, site-B test set (203 images)",
        "",
        "The CAM of the predicted class, upsampled and clipped at zero; the body: every pixel but "
        f"the dark (< {DARK}) background connected to the image border (`benchmarks/figures.py`). "
        f"A map spread evenly over the image would put {100 * area:.1f} % inside.",
        "",
        "| model | seeds | share inside the body |",
        "|---|---|---|",
    ]
    for name, values in table.items():
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(
            f"| {name} | {len(values)} | {100 * statistics.fmean(values):.1f} ± {100 * sd:.1f} % |"
        )
    lines += [
        "",
        f"From-scratch baseline: test accuracy {scratch_rows[0]['acc']:.2f} (seed 0).",
        "",
    ]
    atomic_write_text("\n".join(lines), args.table.with_suffix(".md"))
    atomic_write_text(
        json.dumps({"even_map_share": area, "shares": table, "gallery_model":
                    {"method": method, "seed": seed, "epochs": recipe.epochs}}, indent=1) + "\n",
        args.table.with_suffix(".json"),
    )  # fmt: skip
    for path in written:
        print(f"wrote {path}")
    print("\n".join(lines))
    return written


def camkit_tta(row: dict) -> bool:
    """Rows of a TTA method: the same model as their training method's, counted once."""
    from benchmarks.runner.methods import METHODS

    return METHODS[row["method"]].tta


if __name__ == "__main__":
    main()
