"""Streaming with look-ahead: convert the next tensors on other cores while this one is written.

numpy and torch release the GIL in their kernels, so a few threads overlap reading, converting and
writing. Results come back in input order and at most ``ahead`` items are held at once, so memory
stays near ``ahead + 1`` tensors, not the model.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def threads() -> int:
    """Worker threads: $SLMCTL_THREADS when set, else every core."""
    try:
        n = int(os.environ.get("SLMCTL_THREADS") or 0)
    except ValueError:
        n = 0
    return max(1, n or os.cpu_count() or 1)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
                ahead: int | None = None) -> Iterator[tuple[T, R]]:
    """Yield ``(item, fn(item))`` in order, computing up to ``ahead`` items (default: ``workers``) in
    ``workers`` threads. An exception in ``fn`` is raised at its item; pending work is cancelled."""
    workers = workers or threads()
    ahead = max(1, ahead or workers)
    if workers <= 1:
        for it in items:
            yield it, fn(it)
        return
    from concurrent.futures import ThreadPoolExecutor

    src = iter(items)
    pending: deque = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="slmctl-convert") as ex:
        try:
            for it in src:
                pending.append((it, ex.submit(fn, it)))
                if len(pending) >= ahead:
                    break
            while pending:
                it, fut = pending.popleft()
                res = fut.result()
                nxt = next(src, _END)
                if nxt is not _END:
                    pending.append((nxt, ex.submit(fn, nxt)))
                yield it, res
                del res
        finally:
            for _, fut in pending:
                fut.cancel()


_END = object()
