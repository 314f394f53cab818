"""One atomic write for every file camkit and its benchmarks write (private).

``atomic_write(path, write)`` calls ``write(handle)`` on a temporary file in the target's folder
(a name unique to the process and call), flushes and ``fsync``s it, ``os.replace``s it over the
target and ``fsync``s the folder: a reader, or a run killed half-way, sees the old file or the new
one, never a mix; the temporary file is removed on failure, and a failed write raises an
``OSError`` naming the target and the reason ("no space left on device", also when ``torch.save``
hid it behind "unexpected pos"). `clean_stale_temps` removes the temporary files of writes whose
process died half-way. The figures (``camkit.viz.save_figure``), the MNIST-M cache and the
benchmarks' checkpoints and result files are written through it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_bytes", "clean_stale_temps"]

PathLike = str | os.PathLike[str]
_TEMP = re.compile(r"^\..+\.camkit-(\d+)-[0-9a-f]{8}\.tmp$")  # .<name>.camkit-<pid>-<hex>.tmp


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform or file system can open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Recording:
    """A file handle that remembers the first ``OSError`` its ``write`` raised.

    ``torch.save`` turns a failed write into ``RuntimeError('... unexpected pos ...')``; the
    recorded error says what happened (e.g. no space left on the device).
    """

    def __init__(self, handle: Any) -> None:
        self._handle, self.error = handle, None

    def write(self, data: Any) -> Any:
        try:
            return self._handle.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def _write_error(path: Path, cause: OSError) -> OSError:
    """``cause`` as the same ``OSError`` type with a message naming ``path`` and the reason."""
    if cause.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = f"no space left on device (disk or quota full in {path.parent})"
    else:
        reason = f"could not be written: {cause.strerror or cause}"
    err = type(cause)(f"{path}: {reason}; the previous file, if any, is unchanged")
    err.errno = cause.errno
    return err


def atomic_write(path: PathLike, write: Callable[[Any], None]) -> Path:
    """Call ``write(handle)`` on a fresh temporary file, then move it over ``path`` (the core).

    Raises:
        OSError: the file system refused the write (the same ``OSError`` subclass and ``errno``);
            the message names ``path`` and the reason, e.g. ``"<path>: no space left on device
            (...)"``, also when ``write`` hid the cause (``torch.save`` reports a failed write
            as ``RuntimeError('unexpected pos')``). Other errors of ``write`` propagate as
            they are. The temporary file is removed either way.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.camkit-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    recording = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as handle:
            recording = _Recording(handle)
            write(recording)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        cause = err if isinstance(err, OSError) else getattr(recording, "error", None)
        if cause is not None:
            raise _write_error(path, cause) from err
        raise
    _fsync_folder(path.parent)
    return path


def atomic_write_bytes(data: bytes, path: PathLike) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``Path(path)``."""
    return atomic_write(path, lambda handle: handle.write(data))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_temps(folder: PathLike) -> list[Path]:
    """Remove the temporary files that the atomic writes left in ``folder`` when killed.

    Only names of camkit's own pattern (``.<name>.camkit-<pid>-<hex>.tmp``) are touched, and only
    those whose process is no longer running on this machine, so a write in progress elsewhere is
    never broken. Returns the removed paths (none when ``folder`` does not exist).

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / ".ckpt.pt.camkit-999999999-0123abcd.tmp").write_bytes(b"half")
        >>> [p.name for p in clean_stale_temps(folder)]
        ['.ckpt.pt.camkit-999999999-0123abcd.tmp']
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        match = _TEMP.match(entry.name)
        if match and entry.is_file() and not _alive(int(match.group(1))):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
