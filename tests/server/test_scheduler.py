"""The scheduler with stand-in work functions: one job at a time, a bounded queue, cancellation."""

import asyncio
import threading

import pytest

from leapdecode.server.scheduler import QueueFull, Scheduler


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


def test_jobs_run_one_at_a_time_in_order():
    active, peak, order = [0], [0], []
    lock = threading.Lock()

    def work_for(i):
        def work(job):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            threading.Event().wait(0.01)
            order.append(i)
            with lock:
                active[0] -= 1
            job.emit("done", i)
        return work

    async def main():
        s = Scheduler(max_queue=10)
        await s.start()
        jobs = [s.submit(work_for(i)) for i in range(6)]
        results = [await job.next() for job in jobs]
        await s.stop()
        return s, results

    s, results = run(main())
    assert results == [("done", i) for i in range(6)]
    assert order == list(range(6)) and peak[0] == 1
    assert (s.submitted, s.started, s.dropped) == (6, 6, 0)


def test_full_queue_refuses_and_cancelled_job_frees_its_place():
    gate = threading.Event()

    def blocked(job):
        job.emit("start")
        gate.wait(10)
        job.emit("done")

    async def main():
        s = Scheduler(max_queue=1)
        await s.start()
        first = s.submit(blocked)
        assert await first.next() == ("start", None)  # running: the queue is empty again
        second = s.submit(blocked)
        assert s.depth == 1
        with pytest.raises(QueueFull):
            s.submit(blocked)
        second.cancel()  # its client went away while it waited
        assert s.depth == 0 and await second.next() == ("cancelled", None)
        third = s.submit(blocked)
        gate.set()
        assert await first.next() == ("done", None)
        assert await third.next() == ("start", None)
        assert await third.next() == ("done", None)
        await s.stop()
        return s

    s = run(main())
    assert (s.submitted, s.started, s.dropped) == (3, 2, 1)


def test_running_job_sees_its_cancel_flag_and_errors_are_reported():
    seen = threading.Event()

    def loop_until_cancelled(job):
        job.emit("start")
        for _ in range(1000):
            if job.cancelled:
                seen.set()
                return
            threading.Event().wait(0.005)

    def broken(job):
        raise RuntimeError("boom")

    async def main():
        s = Scheduler(max_queue=4)
        await s.start()
        job = s.submit(loop_until_cancelled)
        await job.next()
        job.cancel()
        bad = s.submit(broken)
        kind, err = await bad.next()
        await s.stop()
        return kind, err

    kind, err = run(main())
    assert seen.is_set()
    assert kind == "error" and isinstance(err, RuntimeError)


def test_bad_queue_size():
    for size in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            Scheduler(max_queue=size)
