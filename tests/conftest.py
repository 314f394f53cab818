import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


class RunInterrupted(Exception):
    """What `crash_after_epoch` raises once a run's checkpoint of the chosen epoch is on disk."""


@pytest.fixture
def crash_after_epoch(monkeypatch):
    """``with crash_after_epoch(1): train(...)``: the run writes its checkpoint of epoch 1, then
    stops as a killed process would; the block expects that stop (it fails if the run goes on),
    and the runner's save is restored after it."""
    import contextlib

    from benchmarks.runner import loop

    @contextlib.contextmanager
    def armed(epoch: int = 1):
        real_save = loop.atomic_save

        def save_then_stop(obj, path):
            real_save(obj, path)
            if obj["epoch"] == epoch:
                raise RunInterrupted

        monkeypatch.setattr(loop, "atomic_save", save_then_stop)
        try:
            with pytest.raises(RunInterrupted):
                yield
        finally:
            monkeypatch.setattr(loop, "atomic_save", real_save)

    return armed
