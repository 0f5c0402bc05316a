"""Decoded batches, prepared on a background thread while the models compute.

On a 2-core machine decoding and resizing photos costs a noticeable share of the
model time; overlapping the two keeps ``pillsnap compare`` close to pure compute
time (see ``benchmarks/bench_compare.py``). The prefetch thread runs at the lowest
scheduling priority (Linux threads have their own nice value): the model threads
are the critical path, decoding fills the cycles they leave, and a busy decoder
never stalls an OpenMP barrier. Memory stays bounded: at most ``depth`` batches
wait in the queue, whatever the sample size.

Unreadable images are skipped and recorded (path + reason), never fatal here;
the caller decides whether "nothing readable" is an error.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pillsnap.exceptions import DataError
from pillsnap.sampling.sample import SampleItem, SkippedFile

T = TypeVar("T")
_DONE = object()


@dataclass
class Batch(Generic[T]):
    items: list[SampleItem]
    data: list[T]


def iter_batches(
    items: Iterable[SampleItem],
    batch_size: int,
    load: Callable[[SampleItem], T],
    skipped: list[SkippedFile],
) -> Iterator[Batch[T]]:
    """Group ``items`` into batches of loaded data; a ``DataError`` from ``load`` skips the item."""
    batch: Batch[T] = Batch([], [])
    for item in items:
        try:
            data = load(item)
        except DataError as exc:
            skipped.append(SkippedFile(str(item.path), str(getattr(exc, "reason", exc))))
            continue
        batch.items.append(item)
        batch.data.append(data)
        if len(batch.items) == batch_size:
            yield batch
            batch = Batch([], [])
    if batch.items:
        yield batch


def prefetch(iterator: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Run ``iterator`` on a daemon thread, ``depth`` results ahead of the consumer.

    An exception in the producer is re-raised in the consumer at the point it
    would have occurred; a consumer that stops early stops the producer too.
    """
    buffer: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        lower_priority()
        try:
            for value in iterator:
                while not stop.is_set():
                    try:
                        buffer.put(value, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            buffer.put(exc)

    thread = threading.Thread(target=produce, name="pillsnap-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            value = buffer.get()
            if value is _DONE:
                return
            if isinstance(value, BaseException):
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.1)


def lower_priority() -> None:
    """Give the calling thread the lowest CPU priority (Linux: per-thread nice 19; elsewhere a no-op)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        return
