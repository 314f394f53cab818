"""The benchmarks of ``benchmarks/perf.py`` (the command line), one module by job.

- ``images``: the 2-D rows ``train``, ``finite``, ``cam`` and ``snapmix``;
- ``tta``: CAM-masking TTA with early exit vs the full vote vs the released protocol;
- ``memory``: the peak memory of the training-step variants, one worker process each;
- ``volumes``: the 3-D rows ``cam3d`` and ``snapmix3d``;
- ``profiles``: the torch.profiler tables of ``--profile``;
- ``report``: the targets, the merge with a previous run and the JSON and markdown files;
- ``common``: what they share (the log, configuration tags, the per-map Pearson r).
"""
