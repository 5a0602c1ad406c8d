"""A model load's progress and its cancel: the steps report a percentage and a line, and a cancel set from another
thread stops the load between steps, or between tensors while transformers reads the weights."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from medgemma_desktop.core.errors import LoadCancelled

ProgressCallback = Callable[[int, str], None]


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise LoadCancelled("loading was cancelled")


@contextmanager
def weights_progress(report: ProgressCallback, start: int, end: int, step: str,
                     cancel: threading.Event | None) -> Iterator[None]:
    """Real progress through the weights, and a cancel that stops mid-load.

    transformers 5.17 loads (and quantizes) the checkpoint tensor by tensor under one tqdm bar in
    `core_model_loading`; while our load runs, that bar reports to `report` and raises `LoadCancelled` between
    tensors once `cancel` is set (transformers shuts its loading pool down on any exception).
    """
    from transformers import core_model_loading

    original = core_model_loading.tqdm

    def tracked(iterable, *args, **kwargs):
        items = list(iterable)
        for index, item in enumerate(items):
            check_cancel(cancel)
            if index % max(len(items) // 50, 1) == 0:
                report(start + (end - start) * index // max(len(items), 1), f"{step} ({index}/{len(items)} tensors)")
            yield item

    core_model_loading.tqdm = tracked
    try:
        yield
    finally:
        core_model_loading.tqdm = original
