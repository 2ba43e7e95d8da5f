"""Progress bars for long loops: tqdm when installed, a plain periodic log line otherwise.

The GPU machines carry torch but not always tqdm, so dgnet must not require it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

try:
    from tqdm.auto import tqdm as _tqdm
except ImportError:  # pragma: no cover - exercised only where tqdm is missing
    _tqdm = None


class _PlainProgress:
    """Minimal stand-in for tqdm: prints a line at most every `every` seconds."""

    def __init__(self, iterable: Iterable[T] | None, total: int | None, desc: str, every: float = 10.0):
        self.iterable, self.total, self.desc, self.every = iterable, total, desc, every
        self.n, self._postfix, self._start, self._last = 0, "", time.monotonic(), 0.0

    def __iter__(self) -> Iterator[T]:
        for item in self.iterable or ():
            yield item
            self.update()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every or (self.total is not None and self.n >= self.total):
            self._last = now
            rate = self.n / max(now - self._start, 1e-9)
            total = f"/{self.total}" if self.total is not None else ""
            print(f"{self.desc}: {self.n}{total} ({rate:.2f} it/s) {self._postfix}", file=sys.stderr)

    def set_postfix(self, values: dict[str, Any] | None = None, **kwargs: Any) -> None:
        items = {**(values or {}), **kwargs}
        self._postfix = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items.items()
        )

    def close(self) -> None:
        pass

    def __enter__(self) -> _PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             disable: bool = False, initial: int = 0) -> Any:
    """A progress bar over `iterable` (or a manual one with `.update()` when iterable is None)."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if _tqdm is not None:
        return _tqdm(iterable, total=total, desc=desc, disable=disable, initial=initial, dynamic_ncols=True)
    bar = _PlainProgress(iterable, total, desc, every=float("inf") if disable else 10.0)
    bar.n = initial
    return bar
