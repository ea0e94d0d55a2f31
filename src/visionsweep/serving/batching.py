"""Dynamic batching: the images of concurrent requests scored in one forward.

Requests wait in a queue per set of request settings (requests with different settings never share a
forward). A batch starts when its queue holds ``max_batch_size`` images or when its oldest request has
waited ``max_wait_ms``; it takes requests in arrival order while their images fit in
``max_batch_size`` (a request is never split: one larger than that is a batch of its own, which the
scorer runs in slices of ``max_batch_size``). One batch runs at a time, in a worker thread, so the
event loop keeps reading requests, and those that arrive meanwhile form the next batch.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

# Scores a batch: its images and its settings in, one answer per image out (``Scorer.score``).
ScoreFunction = Callable[[Sequence[bytes], Mapping[str, Any]], list[Any]]


@dataclass(frozen=True)
class BatchAnswer:
    """The answers to one request's images, and how many images (of all requests) shared its forward."""

    answers: list[Any]
    batch_size: int


@dataclass
class BatchCounts:
    """What the batcher has done since it started: the evidence that batching happens (``/ready``)."""

    requests: int = 0
    images: int = 0
    forwards: int = 0
    largest_batch: int = 0


@dataclass
class _Waiting:
    images: Sequence[bytes]
    settings: Mapping[str, Any]
    arrived: float
    answer: asyncio.Future[BatchAnswer]


@dataclass
class _Queue:
    requests: deque[_Waiting] = field(default_factory=deque)
    images: int = 0


class DynamicBatcher:
    """Gathers the images of concurrent ``submit`` calls into forwards of ``score``.

    ``start`` and ``submit`` run on the event loop; ``stop`` answers what is still queued first.
    """

    def __init__(self, score: ScoreFunction, *, max_batch_size: int, max_wait_ms: float):
        self._score = score
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.counts = BatchCounts()
        self._queues: dict[str, _Queue] = {}
        self._arrival = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="visionsweep-forward")
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="visionsweep-batcher")

    async def stop(self) -> None:
        """Answer every queued request, then end the runner and its thread."""
        self._stopping = True
        self._arrival.set()
        if self._runner is not None:
            await self._runner
        self._executor.shutdown(wait=True)

    async def submit(self, images: Sequence[bytes], settings: Mapping[str, Any], key: str) -> BatchAnswer:
        """The answers to ``images`` scored with ``settings``; ``key`` is the same for equal settings
        (``scoring.settings_key``). An error of the forward is raised here, for each request of its batch."""
        if self._stopping:
            raise RuntimeError("the batcher is stopping")
        waiting = _Waiting(images, settings, time.monotonic(), asyncio.get_running_loop().create_future())
        queue = self._queues.setdefault(key, _Queue())
        queue.requests.append(waiting)
        queue.images += len(images)
        self._arrival.set()
        return await waiting.answer

    async def _run(self) -> None:
        while True:
            key = self._oldest_queue()
            if key is None:
                if self._stopping:
                    return
                self._arrival.clear()
                await self._arrival.wait()
                continue
            queue = self._queues[key]
            due = queue.requests[0].arrived + self.max_wait
            if queue.images < self.max_batch_size and not self._stopping and time.monotonic() < due:
                # Wait for more requests to join, until the oldest is due; another queue's oldest
                # request may fall due first, so look again after every arrival.
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), due - time.monotonic())
                except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
                    pass
                continue
            await self._forward(self._take_batch(key))

    def _oldest_queue(self) -> str | None:
        heads = [(queue.requests[0].arrived, key) for key, queue in self._queues.items() if queue.requests]
        return min(heads)[1] if heads else None

    def _take_batch(self, key: str) -> list[_Waiting]:
        queue = self._queues[key]
        batch = [queue.requests.popleft()]
        images = len(batch[0].images)
        while queue.requests and images + len(queue.requests[0].images) <= self.max_batch_size:
            batch.append(queue.requests.popleft())
            images += len(batch[-1].images)
        queue.images -= images
        if not queue.requests:
            del self._queues[key]
        return batch

    async def _forward(self, batch: list[_Waiting]) -> None:
        images = [image for waiting in batch for image in waiting.images]
        try:
            answers = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._score, images, batch[0].settings)
        except Exception as error:  # the error of every request in the batch; the server keeps serving
            for waiting in batch:
                if not waiting.answer.done():
                    waiting.answer.set_exception(error)
            return
        counts = self.counts
        counts.requests += len(batch)
        counts.images += len(images)
        counts.forwards += 1
        counts.largest_batch = max(counts.largest_batch, len(images))
        start = 0
        for waiting in batch:
            end = start + len(waiting.images)
            if not waiting.answer.done():  # a client that went away leaves a cancelled future
                waiting.answer.set_result(BatchAnswer(answers[start:end], len(images)))
            start = end
