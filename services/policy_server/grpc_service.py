"""The gRPC shell of ``ecrl.v1.PolicyService``: bytes in, status codes out, nothing else.

Errors are mapped to status codes here and only here (kserve's interceptor rule):
:class:`InvalidRequest` → INVALID_ARGUMENT, :class:`NotReady` → UNAVAILABLE, a deadline too
short for the work → DEADLINE_EXCEEDED (answered at once, no useless work), anything else →
INTERNAL with the traceback in the log. Requests arrive as raw bytes and are parsed here, so
even a malformed message is INVALID_ARGUMENT rather than grpc's generic INTERNAL
"Exception deserializing request!".

The handlers are coroutines for a ``grpc.aio`` server: the work itself is plain synchronous
Python of well under a millisecond, run on the event loop, so a call costs no hand-off to a
worker thread and back (the sync server's ~14 context switches per call under load).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from ecrl.actions import HEADS
from ecrl.errors import InvalidRequest, NotReady
from ecrl.v1 import policy_pb2

from . import convert
from .batching import DecideBatcher
from .decisions import PolicyCore
from .metrics import ServerMetrics
from .results import Fallback

log = logging.getLogger("ecrl.policy_server.grpc")

SERVICE_NAME = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name
HEAD_NAMES = tuple(h.name for h in HEADS)
MAX_DETAIL_CHARS = 1000
"""Status details travel in an HTTP/2 trailer: keep them readable and bounded."""

M = TypeVar("M", bound=Message)


class Context(Protocol):
    """What the handlers read of a servicer context (``grpc.aio``'s, or a test's)."""

    def time_remaining(self) -> float | None: ...


class DeadlineTooShort(Exception):
    """Less time is left than the work needs: answer DEADLINE_EXCEEDED now."""


@dataclass(frozen=True)
class Refusal:
    """A request answered with an error status instead of a message."""

    code: grpc.StatusCode
    detail: str


def _parse(message_type: type[M], raw: bytes) -> M:
    try:
        return message_type.FromString(raw)
    except DecodeError as exc:
        raise InvalidRequest(f"request: not a valid {message_type.__name__} ({exc})") from exc


def _outcome(fallback: Fallback) -> str:
    return "model" if fallback is Fallback.NONE else "fallback"


class PolicyServicer:
    """Decide, ScoreNodes and GetPolicyInfo over a :class:`PolicyCore`."""

    def __init__(
        self,
        core: PolicyCore,
        metrics: ServerMetrics,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.core = core
        self.metrics = metrics
        self.clock = clock
        self.batcher = DecideBatcher(core.decide_valid, metrics.decide_batch_size.observe)

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's method handlers for a ``grpc.aio`` server (raw-bytes requests,
        messages serialized out)."""

        def unary(
            rpc: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message | Refusal]],
        ) -> grpc.RpcMethodHandler:
            async def behavior(raw: bytes, context: grpc.aio.ServicerContext) -> Message:
                answer = await rpc(raw, context)
                if isinstance(answer, Refusal):
                    await context.abort(answer.code, answer.detail)  # raises: call ends here
                return answer

            return grpc.unary_unary_rpc_method_handler(
                behavior, response_serializer=lambda m: m.SerializeToString()
            )

        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Decide": unary(self.Decide),
                "ScoreNodes": unary(self.ScoreNodes),
                "GetPolicyInfo": unary(self.GetPolicyInfo),
            },
        )

    # ----------------------------------------------------------------------------- RPCs
    async def Decide(self, raw: bytes, context: Context) -> Message | Refusal:
        async def work() -> tuple[Message, str]:
            request = _parse(policy_pb2.DecideRequest, raw)
            self._check_deadline(context, self.core.expected_decide_s())
            valid = self.core.validate(convert.state_input(request), request.action_mask)
            decision = await self.batcher.decide(valid)
            return convert.decide_response(decision, HEAD_NAMES), _outcome(decision.fallback)

        return await self._serve("Decide", work)

    async def ScoreNodes(self, raw: bytes, context: Context) -> Message | Refusal:
        async def work() -> tuple[Message, str]:
            request = _parse(policy_pb2.ScoreNodesRequest, raw)
            self._check_deadline(context, self.core.expected_score_s())
            scores = self.core.score_columns(*convert.score_columns(request))
            return convert.score_response(scores), _outcome(scores.fallback)

        return await self._serve("ScoreNodes", work)

    async def GetPolicyInfo(self, raw: bytes, context: Context) -> Message | Refusal:
        async def work() -> tuple[Message, str]:
            _parse(policy_pb2.GetPolicyInfoRequest, raw)
            info = self.core.info()
            return convert.info_response(info), _outcome(info.fallback)

        return await self._serve("GetPolicyInfo", work)

    # ------------------------------------------------------------------------ plumbing
    def _check_deadline(self, context: Context, needed_s: float) -> None:
        remaining = context.time_remaining()
        if remaining is not None and remaining < needed_s:
            raise DeadlineTooShort(
                f"deadline leaves {1e3 * remaining:.3f} ms, the decision needs about "
                f"{1e3 * needed_s:.3f} ms; not started"
            )

    async def _serve(
        self, rpc: str, work: Callable[[], Awaitable[tuple[Message, str]]]
    ) -> Message | Refusal:
        """Run ``work``, record it, and map its failure to one status code."""
        start = self.clock()
        try:
            response, outcome = await work()
        except InvalidRequest as exc:
            code, outcome, detail = grpc.StatusCode.INVALID_ARGUMENT, "invalid", str(exc)
        except DeadlineTooShort as exc:
            code, outcome, detail = grpc.StatusCode.DEADLINE_EXCEEDED, "deadline", str(exc)
        except NotReady as exc:
            code, outcome, detail = grpc.StatusCode.UNAVAILABLE, "unavailable", str(exc)
        except Exception:  # a bug: logged with its traceback, the caller gets INTERNAL
            log.exception("request failed", extra={"rpc": rpc})
            code, outcome, detail = grpc.StatusCode.INTERNAL, "error", "internal error (logged)"
        else:
            self.metrics.observe(rpc, outcome, grpc.StatusCode.OK.name, self.clock() - start)
            return response
        self.metrics.observe(rpc, outcome, code.name, self.clock() - start)
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            log.debug("invalid request", extra={"rpc": rpc, "detail": detail[:MAX_DETAIL_CHARS]})
        return Refusal(code, detail[:MAX_DETAIL_CHARS])
