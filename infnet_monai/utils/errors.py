"""One-line error messages: every error a user sees is one line naming the file and the fix.

:func:`one_line` folds a third-party message (often several lines) onto one line;
:func:`failure_line` names the cause of a failed volume; :func:`write_failure_line` the reason
an output could not be written and what to do about it.
"""

from __future__ import annotations

import errno
import os
import re

__all__ = ["one_line", "failure_line", "write_failure_line"]

# what to do when an output cannot be written, by errno
_WRITE_FIXES = {
    errno.ENOSPC: "free disk space or choose another -o",
    errno.EDQUOT: "free space in your quota or choose another -o",
    errno.EROFS: "choose a writable -o",
    errno.EACCES: "choose a writable -o",
    errno.EPERM: "choose a writable -o",
    errno.EISDIR: "remove that folder or choose another -o",
}


def one_line(exc: BaseException, with_type: bool = False, first_only: bool = False) -> str:
    """``exc``'s message on one line: its lines joined (``first_only``: the first alone, for
    compiler errors that run to pages), prefixed with its type when ``with_type``; the type
    alone when there is no message."""
    text = str(exc).strip()
    text = (text.splitlines() or [""])[0] if first_only else " ".join(text.split())
    if with_type:
        return f"{type(exc).__name__}: {text}"
    return text or type(exc).__name__


def failure_line(exc: BaseException, path: str | os.PathLike, own: type[BaseException] | None = None) -> str:
    """One line for a volume that failed: the message of the first error of type ``own`` in the
    chain of causes (errors that name their file and fix, which MONAI may wrap), else the
    innermost error's type and first line prefixed with ``path``."""
    chain = [exc]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    for err in chain:
        if own is not None and isinstance(err, own):
            return str(err)
    return f"{path}: {one_line(chain[-1], with_type=True, first_only=True)}"


def write_failure_line(exc: BaseException, target: str | os.PathLike) -> str:
    """One line for an output that could not be written, with the fix. MONAI's ``SaveImage``
    folds the writer's error into a multi-line message; its last ``...Error: ...`` line is the
    cause."""
    text = str(exc) if not isinstance(exc, OSError) else f"{exc.__class__.__name__}: [Errno {exc.errno}] {exc.strerror}"
    causes = [line.strip() for line in text.splitlines() if re.match(r"\s*\w+(Error|Exception): ", line)]
    cause = causes[-1] if causes else f"{exc.__class__.__name__}: {' '.join(text.split())}"
    errno_match = re.search(r"\[Errno (\d+)\] ([^:']+)", cause)
    if errno_match:  # the reason without the temporary file's name
        reason = errno_match[2].strip()
        return f"{target}: cannot write the output ({reason}); {_WRITE_FIXES.get(int(errno_match[1]), 'check the output folder')}"
    return f"{target}: cannot write the output ({cause}); check the output folder"
