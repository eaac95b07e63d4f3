"""The ``progress`` argument of the index's long calls: False/None, True (a tqdm bar
on stderr) or a callable ``progress(done, total)``."""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

__all__ = ["Progress", "progress_callback"]

Progress = Union[bool, Callable[[int, int], Any], None]


def progress_callback(progress: Progress, desc: str,
                      unit: str = "img") -> tuple[Optional[Callable[[int, int], Any]], Any]:
    """``(callback or None, tqdm bar to close or None)`` for a ``progress`` argument."""
    if progress is None or progress is False:
        return None, None
    if callable(progress):
        return progress, None
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit=unit, leave=False)

    def cb(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return cb, bar
