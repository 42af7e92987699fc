"""A bounded wait queue in front of `workers` worker threads (1: strictly one request at a time).

With workers > 1 (an engine whose target decodes several requests at once, Engine.session) each
running request has a thread of its own and the target batches their passes.

    job = scheduler.submit(work)     # QueueFull when max_queue jobs already wait
    kind, value = await job.next()   # events the work emits from the worker thread
    job.cancel()                     # leave the queue now, or stop at the work's next check
    jobs = scheduler.submit_many([work, ...])  # all or none; one event queue (a request's choices)

`work(job)` runs on the worker thread and reports through `job.emit(kind, value)`, which hands
each event to the event loop with `call_soon_threadsafe`; it should look at `job.cancelled`
between decoding steps. The scheduler knows nothing about engines: app.py supplies the work.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class QueueFull(Exception):
    """The bounded queue has no free place; the server answers 429."""


class Job:
    """One request's passage through the worker."""

    def __init__(self, work: Callable[["Job"], None], loop: asyncio.AbstractEventLoop,
                 events: "asyncio.Queue[tuple[str, Any]] | None" = None):
        self.work = work
        self._loop = loop
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue() if events is None else events
        self._cancel = threading.Event()
        self._on_cancel: Callable[[Job], None] | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Drop the job from the queue, or ask the running work to stop at its next check."""
        if not self._cancel.is_set():
            self._cancel.set()
            if self._on_cancel is not None:
                self._on_cancel(self)

    def emit(self, kind: str, value: Any = None) -> None:
        """Send an event to the waiting request handler (safe from any thread)."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: the server is gone, nobody listens
            self._cancel.set()

    async def next(self) -> tuple[str, Any]:
        return await self._events.get()

    def run(self) -> None:
        """Called on the worker thread; errors become an "error" event."""
        if self.cancelled:
            return
        try:
            self.work(self)
        except Exception as err:  # reported to the handler, which turns it into a response
            self.emit("error", err)


class Jobs(list):
    """Jobs that share one event queue (submit_many): next() is any of theirs, cancel() all."""

    async def next(self) -> tuple[str, Any]:
        return await self[0].next()

    def cancel(self) -> None:
        for job in self:
            job.cancel()


class Scheduler:
    """A bounded wait queue in front of `workers` worker threads."""

    def __init__(self, max_queue: int = 64, workers: int = 1):
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be an integer >= 1, got {max_queue!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        self.max_queue = max_queue
        self.workers = workers
        self._waiting: deque[Job] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.running: set[Job] = set()
        self._runs: set[asyncio.Future] = set()
        # lifetime counters: every submitted job ends as exactly one of run or dropped
        self.submitted = self.started = self.dropped = 0

    @property
    def depth(self) -> int:
        """Jobs waiting (not counting the running one)."""
        return len(self._waiting)

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="leapdecode-worker")
        self._task = asyncio.create_task(self._serve())

    async def stop(self) -> None:
        """Cancel every job, let the running one reach its next check, and end the worker."""
        for job in list(self._waiting):
            job.cancel()
        for job in list(self.running):
            job.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, *self._runs, return_exceptions=True)
        if self._executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    def submit(self, work: Callable[[Job], None]) -> Job:
        return self.submit_many([work])[0]

    def submit_many(self, works: list[Callable[[Job], None]]) -> Jobs:
        """Queue every work or none (QueueFull); their events arrive on one queue."""
        if self._wake is None:
            raise RuntimeError("the scheduler is not started; await scheduler.start() first")
        if len(self._waiting) + len(works) > self.max_queue:
            raise QueueFull(f"the queue is full ({len(self._waiting)} of {self.max_queue} places taken, "
                            f"{len(works)} asked for); retry later")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        jobs = Jobs(Job(work, loop, events) for work in works)
        for job in jobs:
            job._on_cancel = self._drop
            self._waiting.append(job)
        self.submitted += len(jobs)
        self._wake.set()
        return jobs

    def _drop(self, job: Job) -> None:
        """A cancelled job leaves the queue at once, freeing its place (event loop thread)."""
        try:
            self._waiting.remove(job)
        except ValueError:
            return  # it is running or done
        self.dropped += 1
        job.emit("cancelled")

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            while not self._waiting or len(self.running) >= self.workers:
                self._wake.clear()
                await self._wake.wait()
            job = self._waiting.popleft()
            self.started += 1
            self.running.add(job)
            run = loop.run_in_executor(self._executor, job.run)
            self._runs.add(run)
            run.add_done_callback(lambda done, job=job: self._finished(job, done))

    def _finished(self, job: Job, run: asyncio.Future) -> None:
        self.running.discard(job)
        self._runs.discard(run)
        assert self._wake is not None
        self._wake.set()
