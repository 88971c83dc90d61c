"""Compute the next item in a background thread while the caller works on the current one."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence, TypeVar, Union

__all__ = ["prefetch_map"]

T = TypeVar("T")
R = TypeVar("R")


def _capture(fn: Callable[[T], R], item: T) -> Union[R, Exception]:
    try:
        return fn(item)
    except Exception as exc:  # noqa: BLE001 - handed to the caller with its item
        return exc


def prefetch_map(fn: Callable[[T], R], items: Sequence[T], enabled: bool = True) -> Iterator[tuple[T, Union[R, Exception]]]:
    """Yield ``(item, fn(item))`` in order; an exception raised by ``fn`` is yielded, not raised.

    With ``enabled``, ``fn`` of the next item runs in one background thread while the caller
    handles the current one: at most one result is computed ahead (bounded memory: the current
    and the next volume). NumPy, SciPy, zlib and PyTorch release the GIL in their heavy loops.
    """
    if not enabled:
        for item in items:
            yield item, _capture(fn, item)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        ahead = pool.submit(_capture, fn, items[0]) if items else None
        for i, item in enumerate(items):
            result = ahead.result()
            ahead = pool.submit(_capture, fn, items[i + 1]) if i + 1 < len(items) else None
            yield item, result
