"""The dynamic batcher alone (asyncio, a real thread for the model calls)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pillsnap.serve.batching import BatcherClosed, DynamicBatcher, QueueFull


def run(coro):
    return asyncio.run(coro)


def make(fn=None, upstream=lambda: 0, **kw):
    calls: list[tuple[object, list]] = []

    def default(model, xs):
        calls.append((model, list(xs)))
        time.sleep(0.01)
        return [x * 10 for x in xs]

    batcher = DynamicBatcher("t", fn or default, ThreadPoolExecutor(1), upstream=upstream, **kw)
    return batcher, calls


def test_concurrent_items_share_calls_and_results_go_back_to_their_callers():
    async def main():
        b, calls = make(max_batch=8, max_wait_ms=50, upstream=lambda: 1)
        b.start()
        out = await asyncio.gather(*(b.submit("m", i) for i in range(20)))
        await b.close()
        return out, calls

    out, calls = run(main())
    assert out == [i * 10 for i in range(20)]
    assert [len(xs) for _, xs in calls] == [8, 8, 4]


def test_a_lone_request_does_not_wait_when_nothing_else_is_coming():
    async def main():
        b, _ = make(max_batch=8, max_wait_ms=500)
        b.start()
        t0 = time.perf_counter()
        await b.submit("m", 1)
        dt = time.perf_counter() - t0
        await b.close()
        return dt

    assert run(main()) < 0.25  # max_wait_ms is 500: it was not waited for


def test_waits_at_most_max_wait_for_requests_on_their_way():
    async def main():
        b, calls = make(max_batch=8, max_wait_ms=80, upstream=lambda: 1)
        b.start()
        t0 = time.perf_counter()
        await b.submit("m", 1)
        dt = time.perf_counter() - t0
        await b.close()
        return dt, calls

    dt, calls = run(main())
    assert 0.07 < dt < 0.5 and len(calls) == 1


def test_models_never_share_a_batch():
    async def main():
        b, calls = make(max_batch=8, max_wait_ms=50, upstream=lambda: 1)
        b.start()
        await asyncio.gather(*(b.submit("old" if i % 2 else "new", i) for i in range(6)))
        await b.close()
        return calls

    calls = run(main())
    assert sorted((m, xs) for m, xs in calls) == [("new", [0, 2, 4]), ("old", [1, 3, 5])]


def test_errors_go_to_their_callers_and_the_loop_survives():
    def fn(model, xs):
        if "boom" in xs:
            raise RuntimeError("whole batch failed")
        return [ValueError(f"bad {x}") if x == "bad" else x for x in xs]

    async def main():
        b, _ = make(fn, max_batch=2, max_wait_ms=20, upstream=lambda: 1)
        b.start()
        res = await asyncio.gather(
            b.submit("m", "ok"),
            b.submit("m", "bad"),
            b.submit("m", "boom"),
            b.submit("m", "x"),
            return_exceptions=True,
        )
        after = await b.submit("m", "after")
        await b.close()
        return res, after

    res, after = run(main())
    assert res[0] == "ok" and isinstance(res[1], ValueError)
    assert all(isinstance(r, RuntimeError) for r in res[2:]) and after == "after"


def test_cancelled_callers_are_skipped_and_the_queue_is_bounded():
    seen: list = []

    def fn(model, xs):
        seen.extend(xs)
        time.sleep(0.1)
        return xs

    async def main():
        b, _ = make(fn, max_batch=1, max_wait_ms=0, max_queue=3)
        b.start()
        first = asyncio.create_task(b.submit("m", "first"))
        await asyncio.sleep(0.02)  # "first" is running now
        doomed = asyncio.create_task(b.submit("m", "doomed"))
        kept = [asyncio.create_task(b.submit("m", f"k{i}")) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await b.submit("m", "one too many")
        doomed.cancel()
        await asyncio.gather(first, *kept)
        await b.close()
        with pytest.raises(BatcherClosed):
            await b.submit("m", "late")

    run(main())
    assert "doomed" not in seen and seen == ["first", "k0", "k1"]


def test_close_finishes_what_is_queued():
    async def main():
        b, _ = make(max_batch=2, max_wait_ms=0)
        b.start()
        tasks = [asyncio.create_task(b.submit("m", i)) for i in range(5)]
        await asyncio.sleep(0)
        await b.close()
        return await asyncio.gather(*tasks)

    assert run(main()) == [0, 10, 20, 30, 40]
