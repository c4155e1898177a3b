"""The micro-batcher: equal shapes share batches, other shapes never, a full queue refuses."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from microtex.serve.batcher import MicroBatcher, QueueFullError


class Model:
    """Doubles its input and sums it; records every batch's shape."""

    def __init__(self, delay: float = 0.0):
        self.shapes: list[tuple] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, batch):
        with self.lock:
            self.shapes.append(batch.shape)
        time.sleep(self.delay)
        return {"double": batch * 2, "sum": batch.reshape(len(batch), -1).sum(axis=1)}


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_equal_shapes_run_as_fewer_batches_with_the_same_answers():
    model = Model()
    batcher = MicroBatcher(model, max_batch_size=4, max_delay_ms=50)
    images = [np.full((3, 5), float(i), np.float32) for i in range(10)]

    async def main():
        return await asyncio.gather(*(batcher.submit(x) for x in images))

    results = run(main())
    batcher.close()
    assert [s[0] for s in model.shapes] == [4, 4, 2]  # 10 requests, 3 batches
    assert dict(batcher.batch_sizes) == {4: 2, 2: 1}
    for x, result in zip(images, results):
        np.testing.assert_array_equal(result["double"], 2 * x)
        assert result["sum"] == pytest.approx(float(x.sum()))
    assert batcher.queue_depth == 0


def test_different_shapes_never_share_a_batch():
    model = Model()
    batcher = MicroBatcher(model, max_batch_size=8, max_delay_ms=30)
    shapes = [(4, 4), (4, 6), (4, 4), (6, 4), (4, 6), (4, 4)]

    async def main():
        return await asyncio.gather(*(batcher.submit(np.ones(s, np.float32)) for s in shapes))

    results = run(main())
    batcher.close()
    assert sorted(model.shapes) == sorted([(3, 4, 4), (2, 4, 6), (1, 6, 4)])
    assert [r["double"].shape for r in results] == shapes


def test_a_lone_request_waits_at_most_the_delay():
    batcher = MicroBatcher(Model(), max_batch_size=8, max_delay_ms=20)

    async def main():
        start = time.perf_counter()
        await batcher.submit(np.zeros((2, 2), np.float32))
        return time.perf_counter() - start

    elapsed = run(main())
    batcher.close()
    assert 0.015 < elapsed < 1.0


def test_a_full_queue_refuses_instead_of_growing():
    batcher = MicroBatcher(Model(), max_batch_size=8, max_delay_ms=300, max_queue=2)

    async def main():
        waiting = [asyncio.ensure_future(batcher.submit(np.zeros((3, 3), np.float32)))
                   for _ in range(2)]  # fmt: skip
        await asyncio.sleep(0.01)
        assert batcher.queue_depth == 2
        with pytest.raises(QueueFullError, match="2 requests are waiting"):
            await batcher.submit(np.zeros((3, 3), np.float32))
        return await asyncio.gather(*waiting)  # the two still get their answers

    results = run(main())
    batcher.close()
    assert len(results) == 2 and batcher.queue_depth == 0


def test_an_error_reaches_every_request_of_its_batch():
    def broken(batch):
        raise ValueError(f"bad batch of {len(batch)}")

    batcher = MicroBatcher(broken, max_batch_size=3, max_delay_ms=50)

    async def main():
        return await asyncio.gather(*(batcher.submit(np.zeros(2)) for _ in range(3)),
                                    return_exceptions=True)  # fmt: skip

    results = run(main())
    batcher.close()
    assert [str(r) for r in results] == ["bad batch of 3"] * 3


def test_options_are_checked():
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(Model(), max_batch_size=0)
    with pytest.raises(ValueError, match="max_delay_ms must be >= 0"):
        MicroBatcher(Model(), max_delay_ms=-1)


def test_requests_that_arrive_during_a_batch_run_together_after_it():
    model = Model(delay=0.2)
    batcher = MicroBatcher(model, max_batch_size=8, max_delay_ms=1)

    async def main():
        first = asyncio.ensure_future(batcher.submit(np.zeros((2, 2), np.float32)))
        await asyncio.sleep(0.05)  # the first batch is running
        later = []
        for _ in range(5):
            later.append(asyncio.ensure_future(batcher.submit(np.ones((2, 2), np.float32))))
            await asyncio.sleep(0.01)  # each arrives after the other's delay ran out
        return await asyncio.gather(first, *later)

    results = run(main())
    batcher.close()
    assert [s[0] for s in model.shapes] == [1, 5]
    assert [float(r["sum"]) for r in results] == [0.0] + [4.0] * 5
