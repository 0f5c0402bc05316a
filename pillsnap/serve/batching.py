"""Dynamic batching: concurrent requests share one model call.

Each request submits one item (tagged with the served model it started on) and
awaits its future. One asyncio task per batcher gathers items into a batch and runs
``fn(model, items)`` on the model thread, off the event loop. A batch closes when it
holds ``max_batch`` items, when ``max_wait_ms`` has passed since its first item, or
as soon as no other request is on its way to this batcher (``upstream()`` is 0), so
a lone request never waits: batching costs nothing at concurrency 1 and, while the
model thread is busy, items pile up and go together into the next call.

Batchers that share a model thread share a ``slot`` (an asyncio lock): a batch is taken
from the queue only once the thread is free, so everything that arrived while the
other stage's call ran goes into it (formed earlier, it would wait in the thread's
queue while newer requests missed it).

Items of different models (a reload in between) never share a batch. A caller that
gave up (timeout, disconnect) is skipped; a future is never resolved twice; a failed
batch fails only its own callers, and a crash of the loop fails every waiting caller
instead of leaving them hanging.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More than ``max_queue`` items wait: the caller answers 503 with Retry-After."""


class BatcherClosed(Exception):
    """The server is shutting down."""


@dataclass(eq=False)
class _Item:
    model: Any
    x: Any
    fut: asyncio.Future[Any]
    t_enq: float = field(default_factory=time.perf_counter)


BatchFn = Callable[[Any, list[Any]], Sequence[Any]]


class DynamicBatcher:
    """Gather ``submit`` calls into ``fn(model, [x, ...])`` calls run on ``executor``."""

    def __init__(
        self,
        name: str,
        fn: BatchFn,
        executor: Executor,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 64,
        upstream: Callable[[], int] | None = None,
        on_batch: Callable[[str, int, float], None] | None = None,
        slot: asyncio.Lock | None = None,
    ):
        self.name, self._fn, self._executor = name, fn, executor
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._upstream = upstream or (lambda: 0)
        self._on_batch = on_batch
        self._slot = slot or asyncio.Lock()
        self._pending: collections.deque[_Item] = collections.deque()
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    def qsize(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    def poke(self) -> None:
        """Something upstream changed (a request arrived or dropped out): re-check the batch."""
        self._wake.set()

    async def submit(self, model: Any, x: Any) -> Any:
        if self._closed:
            raise BatcherClosed(f"{self.name}: the server is shutting down")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{self.name}: {len(self._pending)} requests are already waiting")
        item = _Item(model, x, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        self._wake.set()
        return await item.fut

    async def _run(self) -> None:
        try:
            await self._loop()
        except BaseException as exc:  # a bug or cancellation: never leave callers hanging
            err = exc if isinstance(exc, Exception) else BatcherClosed(f"{self.name} stopped")
            self._fail_all(err)
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("%s: batching loop died", self.name)
            raise

    def _fail_all(self, err: Exception) -> None:
        while self._pending:
            item = self._pending.popleft()
            if not item.fut.done():
                item.fut.set_exception(err)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
            await self._gather()
            async with self._slot:  # the model thread is free now: take all that is there
                for model, items in _by_model(self._take()):
                    await self._run_batch(loop, model, items)

    async def _gather(self) -> None:
        """Wait while the batch is not full, its deadline not reached and more is on its way."""
        deadline = self._pending[0].t_enq + self.max_wait
        while len(self._pending) < self.max_batch and not self._closed and self._upstream() > 0:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wake.clear()
            try:  # waiting on an Event, the items stay in the deque: a timeout loses nothing
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        while self._pending and len(batch) < self.max_batch:
            item = self._pending.popleft()
            if not item.fut.done():  # the caller gave up while queued
                batch.append(item)
        return batch

    async def _run_batch(
        self, loop: asyncio.AbstractEventLoop, model: Any, items: list[_Item]
    ) -> None:
        start = time.perf_counter()
        try:
            ys = await loop.run_in_executor(self._executor, self._fn, model, [i.x for i in items])
            if len(ys) != len(items):
                raise RuntimeError(f"{self.name}: {len(ys)} results for {len(items)} inputs")
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets it
            for item in items:
                if not item.fut.done():
                    item.fut.set_exception(exc)
        else:
            for item, y in zip(items, ys):
                if item.fut.done():
                    continue
                if isinstance(y, BaseException):
                    item.fut.set_exception(y)
                else:
                    item.fut.set_result(y)
        if self._on_batch is not None:
            self._on_batch(self.name, len(items), time.perf_counter() - start)

    async def close(self) -> None:
        """Finish what is queued, then stop (uvicorn has already waited for in-flight requests)."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self._fail_all(BatcherClosed(f"{self.name}: the server is shutting down"))


def _by_model(batch: list[_Item]) -> list[tuple[Any, list[_Item]]]:
    groups: dict[int, tuple[Any, list[_Item]]] = {}
    for item in batch:
        groups.setdefault(id(item.model), (item.model, []))[1].append(item)
    return list(groups.values())
