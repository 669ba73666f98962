"""Decide requests that arrive together share one run of the policy graph.

Triton's dynamic batching, at the scale of one event loop: a validated request joins the
batch of its loop turn, and the batch is decided right after that turn, in one ONNX run.
Under concurrency the graph run (the largest part of a decision's CPU time) is paid once per
batch instead of once per call. A request that nothing else can join is decided at once: when
the loop has no other callback ready, no other call can reach the batcher in this turn, and
waiting for the turn's end would only add two loop iterations to a sequential caller's
latency. The graph is row-independent, so each request gets the answer it would get alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np

from .results import Decision

MAX_BATCH = 64
"""Most requests one graph run decides (a larger turn's requests go in several runs)."""

Valid = tuple[np.ndarray, np.ndarray]
"""One validated request: the state ``[STATE_DIM]`` float32 and the mask ``[MASK_DIM]`` bool."""


class DecideBatcher:
    """Collects the requests of one loop turn and decides them with ``decide_valid``.

    Runs on one asyncio loop only (the server's); ``max_batch`` bounds the ONNX input.
    """

    def __init__(
        self,
        decide_valid: Callable[[Sequence[Valid]], list[Decision]],
        observe_batch: Callable[[int], None],
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._decide_valid = decide_valid
        self._observe_batch = observe_batch
        self._max_batch = max_batch
        self._pending: list[tuple[Valid, asyncio.Future[Decision]]] = []

    async def decide(self, request: Valid) -> Decision:
        loop = asyncio.get_running_loop()
        if not self._pending and not _others_ready(loop):
            self._observe_batch(1)
            return self._decide_valid([request])[0]
        future: asyncio.Future[Decision] = loop.create_future()
        self._pending.append((request, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self._max_batch):
            batch = pending[start : start + self._max_batch]
            self._observe_batch(len(batch))
            try:
                decisions = self._decide_valid([request for request, _ in batch])
            except BaseException as exc:  # every caller of the batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), decision in zip(batch, decisions, strict=True):
                if not future.done():  # a cancelled call (client gone) needs no answer
                    future.set_result(decision)


def _others_ready(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the loop has callbacks ready to run in this turn (tasks of other calls among
    them). CPython's event loops keep them in ``_ready``; a loop without it (uvloop) is
    assumed busy, which only costs the lone request its turn."""
    ready = getattr(loop, "_ready", None)
    return True if ready is None else bool(ready)
