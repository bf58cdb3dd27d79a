"""Dynamic batching: requests that arrive together share one sampler call, as model servers do.

Each model version has a queue and `workers` workers. A worker takes the first waiting request,
waits up to `window_ms` for more (or until `max_rows`), and runs the group through one
`Engine.run` call in a worker thread (ONNX Runtime releases the GIL). While a call runs, new
requests queue up, so under load batches grow by themselves; alone, a request waits at most
the window. Requests with different sample counts go to separate calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from hhvaem.app.engine import Engine, Prepared

log = logging.getLogger(__name__)


@dataclass
class _Item:
    prepared: Prepared
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    def __init__(
        self,
        window_ms: float = 2.0,
        max_rows: int = 256,
        on_batch: Callable[[int, int, float], None] | None = None,
        workers: int = 1,
    ):
        self.window = window_ms / 1000.0
        self.max_rows = max_rows
        self.on_batch = on_batch  # (requests, rows, seconds) per sampler call, for metrics
        self._queues: dict[Any, asyncio.Queue[_Item]] = {}
        self._workers: dict[Any, list[asyncio.Task]] = {}
        # `workers` sampler calls at once, each single-threaded inside ONNX Runtime: for the sampler's small
        # matrix products, parallel calls use the cores better than threads inside one call.
        self.n_workers = max(1, workers)
        self._pool = ThreadPoolExecutor(max_workers=self.n_workers, thread_name_prefix="sampler")

    async def submit(self, key: Any, engine: Engine, prepared: Prepared) -> Any:
        """Queues one prepared request for `engine` (keyed by model version); returns its finished result."""
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = asyncio.Queue()
            self._workers[key] = [
                asyncio.create_task(self._work(engine, queue), name=f"batcher-{key}-{i}") for i in range(self.n_workers)
            ]
        future = asyncio.get_running_loop().create_future()
        await queue.put(_Item(prepared, future))
        return await future

    async def _work(self, engine: Engine, queue: asyncio.Queue[_Item]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await queue.get()
            group, rows = [first], first.prepared.rows
            deadline = loop.time() + self.window
            while rows < self.max_rows:
                timeout = deadline - loop.time()
                try:
                    item = queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(queue.get(), timeout)
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                group.append(item)
                rows += item.prepared.rows
            for same in _by_samples(group):
                await self._run(loop, engine, same)

    async def _run(self, loop, engine: Engine, items: list[_Item]) -> None:
        live = [i for i in items if not i.future.cancelled()]
        if not live:
            return
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._pool, engine.run, [i.prepared for i in live])
        except Exception as e:  # handed to each waiting request; the worker keeps serving
            for i in live:
                if not i.future.done():
                    i.future.set_exception(e)
            return
        if self.on_batch:
            self.on_batch(len(live), sum(i.prepared.rows for i in live), time.perf_counter() - started)
        for i, r in zip(live, results):
            if not i.future.done():
                i.future.set_result(r)

    async def close(self) -> None:
        tasks = [t for ts in self._workers.values() for t in ts]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()
        self._queues.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _by_samples(items: list[_Item]) -> list[list[_Item]]:
    groups: dict[int, list[_Item]] = {}
    for i in items:
        groups.setdefault(i.prepared.samples, []).append(i)
    return list(groups.values())
