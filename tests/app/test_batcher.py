"""The dynamic batcher's policy: a free worker never waits (window 0), and requests that arrive while the
workers are busy share the next sampler call."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from hhvaem.app.engine import Prepared
from hhvaem.app.services.batcher import DynamicBatcher


class BlockingEngine:
    """Records each call's requests; the first call blocks until released."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.release = threading.Event()

    def run(self, batch):
        if not self.calls:
            self.release.wait(5)
        self.calls.append([int(p.feeds["id"][0]) for p in batch])
        return [int(p.feeds["id"][0]) for p in batch]


def prepared(i: int) -> Prepared:
    return Prepared(feeds={"id": np.array([i])}, rows=1, samples=10, finish=lambda out: out)


def test_a_lone_request_runs_at_once_and_those_queued_behind_a_busy_worker_share_one_call() -> None:
    async def scenario():
        engine = BlockingEngine()
        batcher = DynamicBatcher(window_ms=0.0, workers=1)
        first = asyncio.create_task(batcher.submit("m", engine, prepared(0)))
        await asyncio.sleep(0.05)  # the first call is running (blocked) now
        rest = [asyncio.create_task(batcher.submit("m", engine, prepared(i))) for i in (1, 2, 3)]
        await asyncio.sleep(0.05)
        engine.release.set()
        results = await asyncio.gather(first, *rest)
        await batcher.close()
        return engine.calls, results

    calls, results = asyncio.run(scenario())
    assert results == [0, 1, 2, 3]  # each request gets its own answer
    assert calls == [[0], [1, 2, 3]]  # the three that waited behind the busy worker shared one call
