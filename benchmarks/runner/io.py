"""The experiment runner's files: checkpoints, result rows merged under a lock.

Every write goes through camkit's one atomic write (`camkit._io.atomic_write`): a run killed at
any point leaves the old file or the new one. `merge_results` merges result rows into a JSON file
under an exclusive lock, so concurrent runs lose no row; `load_checkpoint` is ``torch.load``
whose errors name the file and say what was expected.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from camkit._io import atomic_write, atomic_write_bytes, clean_stale_temps

__all__ = [
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "clean_stale_temps",
    "load_checkpoint",
    "merge_results",
]

PathLike = str | os.PathLike[str]


def atomic_save(obj: object, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; returns ``Path(path)``.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "ckpt.pt"
        >>> _ = atomic_save({"w": torch.ones(2)}, path)
        >>> load_checkpoint(path)["w"]
        tensor([1., 1.])
    """
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(text: str, path: PathLike, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``Path(path)``.

    Examples:
        >>> import tempfile
        >>> path = atomic_write_text("hello\\n", Path(tempfile.mkdtemp()) / "a.txt")
        >>> path.read_text()
        'hello\\n'
    """
    return atomic_write_bytes(text.encode(encoding), path)


def load_checkpoint(path: PathLike, *, required: Sequence[str] = ()) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors naming the file.

    Args:
        path: the checkpoint file.
        required: keys the checkpoint must have (e.g. ``("config", "model")`` for a run
            checkpoint); a bare ``state_dict`` or another dict without them is refused.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is empty, truncated or not a torch file, or lacks ``required`` keys;
            the message names the file and what was expected.

    Examples:
        >>> import tempfile
        >>> path = atomic_save({"config": {}, "model": {}}, Path(tempfile.mkdtemp()) / "run.pt")
        >>> sorted(load_checkpoint(path, required=("config", "model")))
        ['config', 'model']
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(
            f"{path}: the checkpoint file is empty (0 bytes); expected a torch.save file"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path}: cannot read the checkpoint ({size} bytes; truncated or not a torch.save "
            f"file?): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    missing = [key for key in required if not isinstance(obj, Mapping) or key not in obj]
    if missing:
        if isinstance(obj, Mapping) and obj and all(torch.is_tensor(v) for v in obj.values()):
            found = f"a bare state_dict ({len(obj)} tensors)"
        elif isinstance(obj, Mapping):
            found = f"a dict with keys {sorted(map(str, obj))[:8]}"
        else:
            found = type(obj).__name__
        raise ValueError(
            f"{path}: expected a run checkpoint with keys {list(required)}, got {found} "
            f"(missing {missing})"
        )
    return obj


def _key_of(row: Mapping[str, Any], key: Sequence[str] | Callable[[Mapping[str, Any]], Any]) -> str:
    value = key(row) if callable(key) else {name: row.get(name) for name in key}
    return json.dumps(value, sort_keys=True, default=str)


def merge_results(
    path: PathLike,
    rows: Iterable[Mapping[str, Any]],
    *,
    key: Sequence[str] | Callable[[Mapping[str, Any]], Any] = ("method", "seed"),
    extra: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Merge result ``rows`` into the JSON file ``path``; return all of its rows afterwards.

    The file holds ``{"rows": [...]}``. Under an exclusive ``fcntl.flock`` of the sidecar file
    ``<path>.lock`` the file is read, every old row whose key equals a new row's key is replaced
    by it (in place), the other new rows are appended, and the file is written back atomically
    (`atomic_write_text`). Concurrent calls, from threads or processes,
    lose no row. The file's other top-level keys are kept; ``extra`` sets some (e.g. a
    ``"recommended"`` entry derived from the rows).

    Args:
        path: the JSON results file (created when missing).
        rows: the new rows, JSON-serialisable mappings.
        key: the names of the fields that identify a row (e.g. ``("method", "seed",
            "settings")``; nested values compare by their JSON form), or a function of the row.
        extra: top-level keys to set besides ``"rows"`` (JSON-serialisable).

    Raises:
        ValueError: ``path`` exists but is not a results file of this form.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "results.json"
        >>> _ = merge_results(path, [{"method": "a", "seed": 0, "acc": 1.0}])
        >>> _ = merge_results(path, [{"method": "b", "seed": 0, "acc": 2.0}])
        >>> [(r["method"], r["acc"]) for r in merge_results(path, [{"method": "a", "seed": 0,
        ...                                                          "acc": 3.0}])]
        [('a', 3.0), ('b', 2.0)]
    """
    import fcntl

    path = Path(path)
    new = [dict(row) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            old: list[dict[str, Any]] = []
            others: dict[str, Any] = {}
            if path.is_file() and path.stat().st_size > 0:
                data = json.loads(path.read_text())
                if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
                    raise ValueError(
                        f"{path}: expected a results file {{'rows': [...]}} (merge_results's), "
                        f"got a {type(data).__name__} of another form; move it aside"
                    )
                old = data["rows"]
                others = {k: v for k, v in data.items() if k != "rows"}
            index = {_key_of(row, key): i for i, row in enumerate(old)}
            for row in new:
                k = _key_of(row, key)
                if k in index:
                    old[index[k]] = row
                else:
                    index[k] = len(old)
                    old.append(row)
            # allow_nan=False: a NaN or inf is refused here rather than written as invalid JSON
            others.update(extra or {})
            others.pop("rows", None)
            text = json.dumps({**others, "rows": old}, indent=1, allow_nan=False)
            atomic_write_text(text + "\n", path)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return old
