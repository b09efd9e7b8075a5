"""Training batches made ahead of the step that uses them.

Generating a batch on the CPU takes longer than a small model's step on a GPU; a background thread
draws the batches from the training generator (the same generator, in the same order, so a seed
gives the same tokens as drawing them in the loop) into a bounded queue, pinned on CUDA so that the
copy to the device does not wait for the step before it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from types import TracebackType

from .tasks import TaskBatch

# Batches waiting at most: enough to hide one slow draw, few enough to keep host memory small.
DEPTH = 2
# How often a producer blocked on a full queue looks whether the consumer has gone.
_POLL_S = 0.1


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


class Prefetcher:
    """`count` batches from `draw()`, made by a background thread, handed out on `device`.

    Use as a context manager: leaving the block (normally or by an exception) stops the thread;
    an exception raised by `draw` is raised again in the consuming thread."""

    def __init__(self, draw: Callable[[], TaskBatch], count: int, device: str, depth: int = DEPTH) -> None:
        self._draw, self._count, self._device = draw, count, device
        self._pin = device.startswith("cuda")
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="tbench-batches", daemon=True)

    def __enter__(self) -> Prefetcher:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # a producer blocked on a full queue sees the stop once there is room
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=_POLL_S)
        self._thread.join()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for _ in range(self._count):
                batch = self._draw()
                if self._pin:
                    batch = TaskBatch(batch.inputs.pin_memory(), batch.targets.pin_memory(),
                                      batch.distance.pin_memory())
                if not self._put(batch):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it where training runs
            self._put(_Failed(exc))
            return
        self._put(_END)

    def __iter__(self) -> Iterator[TaskBatch]:
        if self._thread.ident is None:
            raise RuntimeError("Prefetcher is used as a context manager: `with Prefetcher(...) as batches`")
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            assert isinstance(item, TaskBatch)
            yield item.to(self._device, non_blocking=self._pin)
