"""The experiment runner's files: checkpoints, result rows merged under a lock.

Every write goes through camkit's one atomic write (`camkit._io.atomic_write`): a run killed at
any point leaves the old file or the new one. `merge_results` merges result rows into a JSON file
under an exclusive lock, so concurrent runs lose no row; `read_results` reads them without a lock
(so a read-only file can be read); `load_checkpoint` is ``torch.load`` whose errors name the file
and say what is wrong with it (empty, truncated, corrupt, text, refused pickle globals).
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
    "check_writable",
    "clean_stale_temps",
    "load_checkpoint",
    "merge_results",
    "read_results",
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


def _why_unreadable(path: Path, err: Exception) -> str:
    """What is wrong with a file that ``torch.load`` (or safetensors) could not read."""
    with open(path, "rb") as handle:
        head = handle.read(1024)
    text = str(err)
    refused = [line.strip() for line in text.splitlines() if "GLOBAL" in line]
    if refused:  # a pickle asking for code outside torch's allowlist: never run
        return (
            f"refused: it needs pickle globals outside torch's weights-only allowlist "
            f"({refused[0]}); nothing in it was run. Load only files from a trusted source"
        )
    if path.suffix == ".safetensors":
        cut = "incomplete" in text or "too small" in text
        kind = "truncated or not a safetensors file" if cut else "a corrupt safetensors file"
        return f"{kind} ({type(err).__name__}: {text.splitlines()[0] if text else ''})"
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format
        if "central directory" in text:
            return (
                "truncated: a torch.save zip archive whose end (the central directory) is "
                "missing; an interrupted copy or download?"
            )
        detail = text.split(". ")[0] if text else repr(err)
        return f"a corrupt torch.save zip archive ({detail})"
    if head.startswith(b"\x80"):  # a pickle: torch's legacy format, or a plain pickle
        if "EOF" in text:
            return "truncated: the pickle ends early (an interrupted copy or download?)"
        return "a pickle that is not a torch.save file, or is corrupt; nothing in it was run"
    if b"\0" not in head:
        try:
            start = head.decode("utf-8").strip()
        except UnicodeDecodeError:
            start = None
        if start is not None:
            shown = start[:40] + ("…" if len(start) > 40 else "")
            return f"a text file (it starts with {shown!r}), not a weights file"
    return f"not a torch.save file (it starts with the bytes {head[:8].hex(' ')})"


def load_checkpoint(
    path: PathLike, *, required: Sequence[str] = (), safe_globals: Sequence[Any] = ()
) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors naming the file.

    A ``.safetensors`` file is read with ``safetensors.torch.load_file``.

    Args:
        path: the checkpoint file.
        required: keys the checkpoint must have (e.g. ``("config", "model")`` for a run
            checkpoint); a bare ``state_dict`` or another dict without them is refused.
        safe_globals: classes the weights-only unpickler may build besides torch's own (e.g.
            ``argparse.Namespace``, which timm's training checkpoints hold).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is empty, truncated, corrupt, a text file or not a torch file; it
            needs pickle globals outside the allowlist (refused, nothing run); or it lacks
            ``required`` keys. The message names the file and what is wrong.

    Examples:
        >>> import tempfile
        >>> path = atomic_save({"config": {}, "model": {}}, Path(tempfile.mkdtemp()) / "run.pt")
        >>> sorted(load_checkpoint(path, required=("config", "model")))
        ['config', 'model']
    """
    path = Path(path)
    if not path.is_file():
        found = "a folder" if path.is_dir() else "nothing"
        raise FileNotFoundError(f"{path}: no such checkpoint file (found {found})")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(
            f"{path}: the checkpoint file is empty (0 bytes); expected a torch.save file"
        )
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            obj = safetensors.torch.load_file(path, device="cpu")
        else:
            with torch.serialization.safe_globals(list(safe_globals)):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path}: cannot read the checkpoint ({size} bytes): {_why_unreadable(path, err)}"
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


RUNNER_ROW: dict[str, type | tuple[type, ...]] = {
    "dataset": str,
    "method": str,
    "seed": int,
    "settings": dict,
}
"""The fields every row of the runner has, with their JSON types (`read_results`'s ``fields``)."""


def _parse_results(
    path: Path, text: str, fields: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON of a results file, checked: ``{"rows": [row, ...], ...}`` with object rows."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not valid JSON ({err.msg}: line {err.lineno}, column {err.colno}): a "
            "truncated or corrupt results file; move it aside (rerunning the command evaluates "
            "the finished runs' checkpoints again)"
        ) from err
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError(
            f"{path}: expected a results file {{'rows': [...]}} (merge_results's), "
            f"got a {type(data).__name__} of another form; move it aside"
        )
    for i, row in enumerate(data["rows"]):
        if not isinstance(row, dict):
            raise ValueError(
                f"{path}: row {i} is a JSON {type(row).__name__}, expected an object "
                "(one run's values by name)"
            )
        for name, kind in (fields or {}).items():
            value = row.get(name)
            if name not in row or not isinstance(value, kind) or isinstance(value, bool):
                kinds = kind if isinstance(kind, tuple) else (kind,)
                want = " or ".join(k.__name__ for k in kinds)
                got = type(value).__name__ if name in row else "nothing"
                raise ValueError(
                    f"{path}: row {i}: expected {name!r} to be a {want}, got {got}"
                    + (f" ({value!r:.40})" if name in row else "")
                )
    return data


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: expected a JSON results file (UTF-8 text), got binary data ({err.reason} "
            f"at byte {err.start})"
        ) from err


def read_results(
    path: PathLike, *, fields: Mapping[str, Any] = RUNNER_ROW, missing_ok: bool = False
) -> list[dict[str, Any]]:
    """The rows of the results file ``path``, read without a lock and checked.

    No lock is needed: every write replaces the file atomically, so a reader sees a whole file;
    a read-only file (or folder) can be read.

    Args:
        path: the JSON results file (`merge_results`'s form).
        fields: names every row must have, with their JSON types (``{}``: any object rows).
        missing_ok: a missing (or empty) file gives no rows; else it is an error.

    Raises:
        FileNotFoundError: ``path`` does not exist (or is a folder), unless ``missing_ok``.
        ValueError: the file is not valid JSON (truncated, corrupt), not of the form
            ``{"rows": [...]}``, or a row is not an object or lacks a field of ``fields``; the
            message names the file, the row and what was expected.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "results.json"
        >>> _ = merge_results(path, [{"method": "a", "seed": 0, "acc": 1.0}])
        >>> read_results(path, fields={"seed": int})
        [{'method': 'a', 'seed': 0, 'acc': 1.0}]
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path}: expected a results file, found a folder")
    if not path.is_file() or path.stat().st_size == 0:
        if missing_ok:
            return []
        what = "empty (0 bytes)" if path.is_file() else "no such results file"
        raise FileNotFoundError(f"{path}: {what}")
    return _parse_results(path, _read_text(path), fields)["rows"]


def check_writable(path: PathLike) -> Path:
    """Make ``path``'s folder and take (then release) its merge lock: refuse a results file that
    could not be written before any run starts.

    Raises:
        OSError: the folder cannot be made or the lock file not opened (read-only, no space);
            the message names the path.
    """
    path = Path(path)
    lock = path.parent / f"{path.name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a"):
            pass
    except OSError as err:
        file = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        why = f"{file} is a file, not a folder" if file else f"{err.strerror or err}: {lock}"
        raise type(err)(f"{path}: the results file cannot be written ({why})") from err
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"{path}: the results file cannot be written (read-only folder)")
    return path


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
    ``"recommended"`` entry derived from the rows). To only read the rows, use `read_results`
    (no lock, no write).

    Args:
        path: the JSON results file (created when missing).
        rows: the new rows, JSON-serialisable mappings.
        key: the names of the fields that identify a row (e.g. ``("method", "seed",
            "settings")``; nested values compare by their JSON form), or a function of the row.
        extra: top-level keys to set besides ``"rows"`` (JSON-serialisable).

    Raises:
        ValueError: ``path`` exists but is not a results file of this form (invalid JSON, or
            a row that is not an object), or a new row holds a NaN or infinity; the file is
            left unchanged and the message names it.
        OSError: the file or its lock cannot be written (e.g. no space left on the device);
            the old file is kept and the message names it.

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
    check_writable(path)
    with open(path.parent / f"{path.name}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            old: list[dict[str, Any]] = []
            others: dict[str, Any] = {}
            if path.is_file() and path.stat().st_size > 0:
                data = _parse_results(path, _read_text(path))
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
            others.update(extra or {})
            others.pop("rows", None)
            try:  # allow_nan=False: a NaN or inf is refused rather than written as invalid JSON
                text = json.dumps({**others, "rows": old}, indent=1, allow_nan=False)
            except ValueError as err:
                raise ValueError(
                    f"{path}: {err} (a NaN or infinity in a row); the file is unchanged"
                ) from err
            atomic_write_text(text + "\n", path)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return old
