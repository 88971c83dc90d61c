"""Safe file output: write to a temporary sibling (file or folder), then rename over the target;
check an output folder before any work; remove the temporaries a killed run left behind."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_output", "atomic_folder", "prepare_output_dir", "remove_stale_temporaries", "OutputDirError"]

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"
# .<target name>.<host>.<pid>.<8 random characters of mkstemp>.infnet-tmp<suffix>
_MARKER = ".infnet-tmp"
_TEMPORARY = re.compile(
    r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d{1,7})\.[a-z0-9_]{8}\.infnet-tmp(\.[A-Za-z0-9]+)*$"
)


class OutputDirError(ValueError):
    """The output folder cannot take the run's outputs; the message names it and the fix."""


def _suffix(path: Path) -> str:
    """The format suffix writers read (``.nii.gz`` kept whole; dots inside a name are not one)."""
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    The temporary file keeps ``path``'s format suffix (``.nii.gz`` stays ``.nii.gz``) so writers
    that pick a format from the name still work, and carries the host and process id, so that
    :func:`remove_stale_temporaries` can tell a killed run's leftovers from a live run's. On any
    exception the temporary file is removed and ``path`` is left untouched. ``overwrite=False``
    raises ``FileExistsError`` if ``path`` exists.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: output exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=f"{_MARKER}{_suffix(path)}", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it becomes the folder ``path``.

    A folder already at ``path`` is renamed aside just before and removed just after, so readers
    see the old or the new folder whole. On any exception the temporary folder is removed and
    ``path`` is left untouched. The temporary is named as :func:`atomic_output`'s, so
    :func:`remove_stale_temporaries` removes a killed run's. ``overwrite=False`` raises
    ``FileExistsError`` if ``path`` exists.
    """
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{path}: output exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)

    def temporary() -> Path:
        return Path(tempfile.mkdtemp(prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=_MARKER, dir=path.parent))

    tmp, old = temporary(), None
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if path.is_dir() and not path.is_symlink():
            old = temporary()
            os.replace(path, old)  # onto the empty temporary folder
        try:
            os.replace(tmp, path)
        except OSError:
            if old is not None:
                os.replace(old, path)
                old = None
            raise
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of :func:`atomic_output` in ``folder`` whose writer (same host)
    is no longer running; returns the removed paths. Other hosts' files are left alone."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in Path(folder).iterdir():
            match = _TEMPORARY.match(entry.name)
            if match and match["host"] == _HOST and not _alive(int(match["pid"])):
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_dir() and not entry.is_symlink():  # an atomic_folder's
                        shutil.rmtree(entry)
                        removed.append(entry)
                    elif entry.is_file():
                        entry.unlink()
                        removed.append(entry)
    return removed


def prepare_output_dir(folder: str | os.PathLike, needed_bytes: int = 0) -> Path:
    """Make sure ``folder`` exists (created with its parents), is writable and has about
    ``needed_bytes`` free, before any work; remove the temporaries killed runs left there.

    Raises:
        OutputDirError: one line naming the folder and the fix.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputDirError(f"{folder}: exists and is not a folder; choose an output folder (-o)") from None
    except OSError as exc:
        raise OutputDirError(f"{folder}: cannot create the output folder ({exc.strerror}); choose another -o") from exc
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputDirError(
            f"{folder}: cannot write into the output folder ({exc.strerror}); choose a writable -o"
        ) from exc
    remove_stale_temporaries(folder)
    free = shutil.disk_usage(folder).free
    if needed_bytes > free:
        raise OutputDirError(
            f"{folder}: about {needed_bytes / 1e6:.0f} MB of outputs expected but only {free / 1e6:.0f} MB free; "
            "free disk space or choose another -o"
        )
    return folder
