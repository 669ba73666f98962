"""DecideBatcher: the requests of one loop turn go to one decide call, answers in order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from services.policy_server.batching import DecideBatcher, Valid
from services.policy_server.results import Decision, Fallback


def _request(i: int) -> Valid:
    return np.full(3, float(i), dtype=np.float32), np.ones(2, dtype=bool)


class Recorder:
    """A decide_valid that answers each state's first value as the action, and records."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.sizes: list[int] = []
        self.fail = fail

    def decide(self, requests: Sequence[Valid]) -> list[Decision]:
        self.calls.append(len(requests))
        if self.fail:
            raise RuntimeError("graph broke")
        return [Decision((int(x[0]),), 0.5, "v", Fallback.NONE) for x, _ in requests]


def _batcher(rec: Recorder, max_batch: int = 64) -> DecideBatcher:
    return DecideBatcher(rec.decide, rec.sizes.append, max_batch=max_batch)


def test_requests_of_one_turn_share_one_call_and_get_their_own_answers():
    rec = Recorder()

    async def main() -> list[Decision]:
        batcher = _batcher(rec)
        return await asyncio.gather(*(batcher.decide(_request(i)) for i in range(5)))

    answers = asyncio.run(main())
    assert [d.action for d in answers] == [(i,) for i in range(5)]
    assert rec.calls == [5]
    assert rec.sizes == [5]


def test_a_lone_request_is_decided_alone_and_later_ones_start_a_new_batch():
    rec = Recorder()

    async def main() -> list[Decision]:
        batcher = _batcher(rec)
        first = await batcher.decide(_request(1))
        second = await batcher.decide(_request(2))
        return [first, second]

    assert [d.action for d in asyncio.run(main())] == [(1,), (2,)]
    assert rec.calls == [1, 1]


def test_a_batch_larger_than_the_bound_is_split():
    rec = Recorder()

    async def main() -> list[Decision]:
        batcher = _batcher(rec, max_batch=2)
        return await asyncio.gather(*(batcher.decide(_request(i)) for i in range(5)))

    assert [d.action for d in asyncio.run(main())] == [(i,) for i in range(5)]
    assert rec.calls == [2, 2, 1]


def test_a_failing_decide_reaches_every_caller_of_its_batch():
    rec = Recorder(fail=True)

    async def main() -> list[object]:
        batcher = _batcher(rec)
        calls = (batcher.decide(_request(i)) for i in range(3))
        return await asyncio.gather(*calls, return_exceptions=True)

    answers = asyncio.run(main())
    assert all(isinstance(a, RuntimeError) and "graph broke" in str(a) for a in answers)


def test_a_cancelled_caller_does_not_stop_the_others():
    rec = Recorder()

    async def main() -> Decision:
        batcher = _batcher(rec)
        gone = asyncio.ensure_future(batcher.decide(_request(1)))
        kept = asyncio.ensure_future(batcher.decide(_request(2)))
        await asyncio.sleep(0)  # both joined the batch
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await kept

    assert asyncio.run(main()).action == (2,)


def _without_suspending(coro) -> Decision:
    """Run a coroutine one step; it must finish in that step (no await that yields)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine waited for a later loop turn")


def test_a_request_nothing_else_can_join_is_decided_without_waiting_for_the_turn():
    rec = Recorder()

    async def main() -> Decision:
        return _without_suspending(_batcher(rec).decide(_request(4)))

    assert asyncio.run(main()).action == (4,)
    assert rec.calls == [1] and rec.sizes == [1]


def test_a_request_waits_for_the_turn_when_other_callbacks_are_ready():
    rec = Recorder()

    async def main() -> Decision:
        batcher = _batcher(rec)
        asyncio.get_running_loop().call_soon(lambda: None)  # something else runs this turn
        pending = batcher.decide(_request(6))
        with pytest.raises(AssertionError, match="later loop turn"):
            _without_suspending(pending)
        assert rec.calls == []
        return await batcher.decide(_request(7))

    assert asyncio.run(main()).action == (7,)
