"""Parts that need no cluster: error hints, conversions, backoff, endpoints."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

import hourglass
from hourglass import _status
from hourglass.errors import error_class
from hourglass.models import from_timestamp, to_duration, to_timestamp


def _details(*messages: object) -> bytes:
    status = status_pb2.Status(code=14, message="x")
    for m in messages:
        packed = any_pb2.Any()
        packed.Pack(m)  # type: ignore[arg-type]
        status.details.append(packed)
    return status.SerializeToString()


def test_old_hint_metadata_is_not_read() -> None:
    hints = _status.hints_from_metadata(
        [("x-hourglass-leader", "2=10.0.0.2:7002"), ("x-hourglass-retry-after-ms", "200")],
    )
    assert hints == _status.Hints()


def test_hints_from_google_rpc_details() -> None:
    blob = _details(
        error_details_pb2.ErrorInfo(
            reason="NOT_LEADER",
            domain=_status.ERROR_DOMAIN,
            metadata={"leader_address": "node-3:7003", "leader_id": "3", "partition": "1"},
        ),
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1, nanos=5 * 10**8)),
    )
    hints = _status.hints_from_metadata([("grpc-status-details-bin", blob)])
    assert hints.leader == "node-3:7003" and hints.leader_id == 3
    assert hints.retry_after == 1.5 and hints.reason == "NOT_LEADER"

    # An ErrorInfo of another domain (a proxy's) names no leader and is no node's answer.
    blob = _details(
        error_details_pb2.ErrorInfo(
            reason="NOT_LEADER", domain="proxy.example", metadata={"leader_address": "x:1"}
        )
    )
    assert _status.hints_from_metadata([("grpc-status-details-bin", blob)]) == _status.Hints()


def test_invalid_argument_field() -> None:
    violation = error_details_pb2.BadRequest.FieldViolation(field="fire_at", description="x")
    bad = error_details_pb2.BadRequest(field_violations=[violation])
    blob = _details(bad)
    hints = _status.hints_from_metadata([("grpc-status-details-bin", blob)])
    assert hints.field == "fire_at"
    # A batch item carries the same details as a list of Any.
    packed = any_pb2.Any()
    packed.Pack(bad)
    item = _status.error_from_code(3, "invalid fire_at: x", details=[packed])
    assert isinstance(item, hourglass.InvalidArgument) and isinstance(item, ValueError)
    assert item.field == "fire_at"
    # The message text is not parsed.
    assert _status.error_from_code(3, "invalid workflow_id: must not be empty").field is None  # type: ignore[attr-defined]
    # A corrupt details blob is ignored rather than failing the call's error handling.
    hints = _status.hints_from_metadata([("grpc-status-details-bin", b"\xff\xff\xff")])
    assert hints == _status.Hints()


@pytest.mark.parametrize(
    ("code", "reason", "retry_after", "retryable"),
    [
        (grpc.StatusCode.UNAVAILABLE, None, None, True),
        (grpc.StatusCode.UNAVAILABLE, "NOT_LEADER", 0.2, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "COMMIT_TIMEOUT", None, True),
        (grpc.StatusCode.UNKNOWN, None, None, True),
        (grpc.StatusCode.INTERNAL, None, None, True),
        (grpc.StatusCode.INTERNAL, "STORAGE", None, False),
        (grpc.StatusCode.UNKNOWN, "INTERNAL", None, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, None, 0.5, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, None, None, False),
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", None, False),
        (grpc.StatusCode.NOT_FOUND, "TIMER_NOT_FOUND", None, False),
        (grpc.StatusCode.ALREADY_EXISTS, "TIMER_ALREADY_EXISTS", None, False),
        (grpc.StatusCode.FAILED_PRECONDITION, "NODE_WIPED", None, False),
    ],
)
def test_retryability(
    code: grpc.StatusCode, reason: str | None, retry_after: float | None, retryable: bool
) -> None:
    # The message never matters.
    for message in ("transport: connection reset", "storage: corruption"):
        error = error_class(code)(message, code=code, retry_after=retry_after, reason=reason)
        assert _status.is_retryable(error) is retryable


def test_error_classes_per_code() -> None:
    for code in grpc.StatusCode:
        if code is grpc.StatusCode.OK:
            continue
        error = _status.error_from_code(code.value[0], "m")
        assert error.code is code and isinstance(error, hourglass.HourglassError)
        assert type(error) is not hourglass.HourglassError, code
    assert isinstance(_status.error_from_code(14, "m"), hourglass.Unavailable)
    assert isinstance(_status.error_from_code(5, "m"), hourglass.NotFound)
    assert isinstance(_status.error_from_code(6, "m"), hourglass.AlreadyExists)
    assert _status.is_retryable_batch_item(_status.error_from_code(4, "m"))
    assert not _status.is_retryable_batch_item(_status.error_from_code(2, "m"))
    unknown = _status.error_from_code(99, "m")
    assert type(unknown) is hourglass.HourglassError and "99" in str(unknown)
    assert str(_status.error_from_code(5, "gone", target="h:1")) == "NOT_FOUND: gone (from h:1)"


def test_time_conversions_are_exact() -> None:
    when = datetime(2031, 5, 17, 8, 30, 15, 123456, tzinfo=timezone(timedelta(hours=-7)))
    ts = to_timestamp(when, "at")
    assert from_timestamp(ts) == when
    assert from_timestamp(ts).tzinfo == timezone.utc
    assert (ts.seconds, ts.nanos) == (int(when.timestamp()), 123456000)
    d = to_duration(timedelta(days=30, microseconds=7), "delay")
    assert (d.seconds, d.nanos) == (30 * 86400, 7000)
    assert to_duration(1.5, "delay").nanos == 500_000_000
    with pytest.raises(hourglass.InvalidArgument, match="naive"):
        to_timestamp(datetime(2030, 1, 1), "at")
    with pytest.raises(hourglass.InvalidArgument):
        to_duration(timedelta(seconds=-1), "delay")
    with pytest.raises(hourglass.InvalidArgument):
        to_duration("10s", "delay")  # type: ignore[arg-type]


def test_backoff_is_full_jitter_and_capped() -> None:
    policy = hourglass.RetryPolicy(initial_backoff=0.1, max_backoff=1.0)
    rng = random.Random(7)
    for retry, cap in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (50, 1.0), (10**6, 1.0)]:
        waits = [policy.backoff(retry, rng) for _ in range(200)]
        assert all(0 <= w <= cap for w in waits)
        assert max(waits) > cap * 0.8 and min(waits) < cap * 0.2  # spread over [0, cap]
    with pytest.raises(ValueError):
        hourglass.RetryPolicy(deadline=0)
    with pytest.raises(ValueError):
        hourglass.RetryPolicy(initial_backoff=2, max_backoff=1)


def test_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    client = hourglass.Client(" http://a:1, b:2 ,,b:2")
    assert client.endpoints == ("a:1", "b:2")
    monkeypatch.setenv("HOURGLASS_ENDPOINTS", "c:3,d:4")
    assert hourglass.Client().endpoints == ("c:3", "d:4")
    monkeypatch.delenv("HOURGLASS_ENDPOINTS")
    assert hourglass.Client().endpoints == ("127.0.0.1:7001",)
    for bad in ["", "nohost", "a:b", ",", "http://a:1,https://b:2"]:
        with pytest.raises(hourglass.InvalidArgument):
            hourglass.Client(bad)
