"""A micro-batcher: concurrent requests of equal input shape run as one batch.

While the model is idle a request waits at most ``max_delay_ms`` for others of
its shape; while a batch runs, requests gather until it is done (they could not
run sooner) and then run together; a batch never holds more than
``max_batch_size`` requests. Requests of different
shapes never share a batch. The queue is bounded: past ``max_queue`` waiting
requests :meth:`MicroBatcher.submit` raises :class:`QueueFullError` (the
service answers 503 with ``Retry-After``) instead of growing without bound.
Batches run one at a time on a worker thread, so the event loop keeps
accepting requests while the model runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from microtex._validation import check_positive_int

__all__ = ["MicroBatcher", "QueueFullError"]


class QueueFullError(RuntimeError):
    """The batcher holds ``max_queue`` waiting requests already."""


def _row(result: Any, i: int) -> Any:
    if isinstance(result, dict):
        return {key: value[i] for key, value in result.items()}
    return result[i]


class MicroBatcher:
    """Group concurrent requests by shape and run each group as one batch.

    Parameters
    ----------
    run : callable
        ``run(batch)`` with ``batch`` the requests' arrays stacked on a new
        first axis; returns an array or a dict of arrays whose first axis is
        the batch's (each request gets its row).
    max_batch_size : int
    max_delay_ms : float
        Longest a request waits for others of its shape.
    max_queue : int
        Most requests waiting (not yet running) at once.

    Attributes
    ----------
    batch_sizes : collections.Counter
        How many batches of each size ran.
    """

    def __init__(self, run: Callable[[np.ndarray], Any], *, max_batch_size: int = 8,
                 max_delay_ms: float = 2.0, max_queue: int = 64):  # fmt: skip
        self.run = run
        self.max_batch_size = check_positive_int("max_batch_size", max_batch_size)
        if not max_delay_ms >= 0:
            raise ValueError(f"max_delay_ms must be >= 0, got {max_delay_ms!r}")
        self.max_delay = float(max_delay_ms) / 1000.0
        self.max_queue = check_positive_int("max_queue", max_queue)
        self.batch_sizes: Counter = Counter()
        self._pending: dict[tuple, list] = {}
        self._timers: dict[tuple, asyncio.TimerHandle] = {}
        self._waiting = 0
        self._running = 0
        self._due: list[tuple] = []  # groups whose delay ran out while a batch was running
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="microtex-batch"
        )

    @property
    def queue_depth(self) -> int:
        """Requests waiting for their batch to start."""
        return self._waiting

    async def submit(self, array: np.ndarray) -> Any:
        """The result row of ``array``, run in a batch with concurrent requests of its shape."""
        if self._waiting >= self.max_queue:
            raise QueueFullError(
                f"{self._waiting} requests are waiting (max_queue={self.max_queue})"
            )
        loop = asyncio.get_running_loop()
        array = np.asarray(array)
        key = (array.shape, array.dtype.str)
        future = loop.create_future()
        group = self._pending.setdefault(key, [])
        group.append((array, future))
        self._waiting += 1
        if len(group) >= self.max_batch_size:
            self._flush(key)
        elif len(group) == 1:
            self._timers[key] = loop.call_later(self.max_delay, self._due_now, key)
        return await future

    def _due_now(self, key: tuple) -> None:
        """A group's delay ran out: run it, or, while a batch runs, after that batch."""
        self._timers.pop(key, None)
        if self._running:
            if key not in self._due:
                self._due.append(key)
        else:
            self._flush(key)

    def _flush(self, key: tuple) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._due:
            self._due.remove(key)
        group = self._pending.pop(key, [])
        if not group:
            return
        self._waiting -= len(group)
        self._running += 1
        self.batch_sizes[len(group)] += 1
        asyncio.get_running_loop().create_task(self._run(group))

    async def _run(self, group: list) -> None:
        loop = asyncio.get_running_loop()
        batch = np.stack([array for array, _ in group])
        try:
            result = await loop.run_in_executor(self._executor, self.run, batch)
        except Exception as exc:  # noqa: BLE001  (every request of the batch gets it)
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        else:
            for i, (_, future) in enumerate(group):
                if not future.done():  # a request that timed out no longer waits
                    future.set_result(_row(result, i))
        finally:
            self._running -= 1
            if not self._running:
                for key in list(self._due):  # what gathered while this batch ran
                    self._flush(key)

    def close(self) -> None:
        """Stop the worker thread once the running batch is done."""
        self._executor.shutdown(wait=True)
