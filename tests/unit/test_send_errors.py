"""Pure rules of sending: which Kafka errors park an outbox row, how a relay round is judged, how a stub reads."""

from __future__ import annotations

import inspect

import pytest
from aiokafka import ConsumerRecord
from aiokafka import errors as ke
from faust.exceptions import ProducerSendError

from orderflow.ops.dlq import DeadLetter, describe
from orderflow.runtime.dlq import (
    HEADER_ORIGINAL_KEY_SIZE,
    HEADER_ORIGINAL_SIZE,
    HEADER_STUB,
    HEADER_STUB_REASON,
    STUB_PREFIX_BYTES,
    Source,
    headers_for,
    stub_of,
)
from orderflow.runtime.outbox import DELIVERY, QUEUE, Attempt, RoundPlan, backoff, plan_round
from orderflow.runtime.send_errors import PERMANENT, TRANSIENT, classify, is_too_large, kafka_error_of


def wrapped(exc: BaseException) -> ProducerSendError:
    """What faust's Producer.send raises for a client error: `raise ProducerSendError(...) from exc`."""
    try:
        raise ProducerSendError(f"Error while sending: {exc!r}") from exc
    except ProducerSendError as outer:
        return outer


@pytest.mark.parametrize("exc", [
    ke.MessageSizeTooLargeError("The message is 3000000 bytes when serialized"),
    ke.MessageSizeTooLargeError(),
    ke.RecordListTooLargeError(),
    ke.TopicAuthorizationFailedError("order.status"),
    ke.InvalidTopicError(),
    ke.UnknownTopicOrPartitionError(),
    ke.PolicyViolationError(),
    ke.InvalidTimestampError(),
    ke.GroupAuthorizationFailedError(),  # on no list, not retriable: permanent
])
def test_errors_about_the_message_or_its_topic_are_permanent(exc: BaseException) -> None:
    assert classify(exc).permanent
    assert classify(wrapped(exc)).permanent, "faust's wrapper must not hide the cause"


@pytest.mark.parametrize("exc", [
    ke.KafkaConnectionError("Connection at 127.0.0.1:9092 closed"),
    ke.RequestTimedOutError(),
    ke.NotLeaderForPartitionError(),
    ke.LeaderNotAvailableError(),
    ke.KafkaTimeoutError(),
    ke.NotEnoughReplicasError(),
    ke.BrokerNotAvailableError(),
    ke.NoBrokersAvailable(),
    ke.AuthenticationFailedError(),
    ke.SaslAuthenticationFailed(),
    ke.ClusterAuthorizationFailedError(),
    ke.ProducerClosed(),
    ke.ProducerFenced(),
    ke.KafkaStorageError(),
    OSError("connection refused"),
    TimeoutError(),
    RuntimeError("the producer is not started"),
])
def test_errors_of_the_broker_the_network_or_the_producer_are_transient(exc: BaseException) -> None:
    assert classify(exc).transient
    assert classify(wrapped(exc)).transient


def test_an_unknown_topic_at_delivery_is_transient_the_topic_had_metadata_when_queued() -> None:
    assert classify(ke.UnknownTopicOrPartitionError(), at_delivery=True).transient
    assert classify(ke.UnknownTopicOrPartitionError(), at_delivery=False).permanent
    assert classify(ke.MessageSizeTooLargeError(), at_delivery=True).permanent


def test_every_aiokafka_error_is_classified_and_the_lists_do_not_overlap() -> None:
    assert not set(PERMANENT) & set(TRANSIENT)
    for _name, cls in inspect.getmembers(ke, inspect.isclass):
        if issubclass(cls, ke.KafkaError):
            failure = classify(cls())
            assert failure.permanent != failure.transient
            if cls.retriable and not issubclass(cls, PERMANENT):
                assert failure.transient, cls


def test_the_reason_is_one_line_naming_the_error() -> None:
    failure = classify(wrapped(ke.MessageSizeTooLargeError("The message is 5 bytes\nsecond line")))
    assert failure.reason == "[Error 10] MessageSizeTooLargeError: The message is 5 bytes"
    assert classify(OSError("refused")).reason == "OSError: refused"
    assert classify(TimeoutError()).reason == "TimeoutError"


def test_too_large_is_found_behind_wrappers_only_for_size_errors() -> None:
    assert is_too_large(wrapped(ke.MessageSizeTooLargeError()))
    assert is_too_large(ke.RecordTooLargeError())
    assert not is_too_large(wrapped(ke.KafkaTimeoutError()))
    assert not is_too_large(ValueError("too large"))
    assert kafka_error_of(ValueError()) is None


# --- a relay round ------------------------------------------------------------------------------------------

OK = Attempt(None)


def test_a_round_where_everything_was_acknowledged_publishes_everything() -> None:
    assert plan_round([1, 2, 3], {1: OK, 2: OK, 3: OK}) == RoundPlan(published=[1, 2, 3])


def test_a_row_refused_while_queueing_is_parked_and_the_rest_flows_on() -> None:
    too_large = Attempt(wrapped(ke.MessageSizeTooLargeError("The message is 3000000 bytes")), QUEUE)
    plan = plan_round([1, 2, 3, 4], {1: OK, 2: too_large, 3: OK, 4: OK})
    assert plan.published == [1, 3, 4]
    assert [(i, "MessageSizeTooLargeError" in reason) for i, reason in plan.parked] == [(2, True)]
    assert plan.retry is None and plan.confirm_alone is None


def test_a_broker_rejection_within_a_batch_is_confirmed_alone_before_parking() -> None:
    refused = Attempt(ke.MessageSizeTooLargeError(), DELIVERY)
    plan = plan_round([1, 2, 3], {1: OK, 2: refused, 3: OK})
    assert (plan.published, plan.parked, plan.confirm_alone, plan.retry) == ([1, 3], [], 2, None)
    alone = plan_round([2], {2: refused}, alone=True)
    assert (alone.published, [i for i, _ in alone.parked], alone.confirm_alone) == ([], [2], None)


def test_a_transient_failure_retries_from_it_and_keeps_what_was_acknowledged() -> None:
    parked = Attempt(ke.TopicAuthorizationFailedError("secret"), QUEUE)
    timeout = Attempt(ke.KafkaTimeoutError(), DELIVERY)
    later = Attempt(ke.MessageSizeTooLargeError(), QUEUE)
    plan = plan_round([1, 2, 3, 4, 5], {1: OK, 2: parked, 3: timeout, 4: later})
    assert plan.published == [1]
    assert [i for i, _ in plan.parked] == [2], "a row after the transient failure is judged in a later round"
    assert plan.retry is not None and "KafkaTimeoutError" in plan.retry
    assert plan.confirm_alone is None


def test_rows_never_sent_are_neither_published_nor_parked() -> None:
    refused = Attempt(ke.KafkaConnectionError(), QUEUE)
    plan = plan_round([1, 2, 3], {1: OK, 2: refused})
    assert (plan.published, plan.parked) == ([1], [])
    assert plan.retry is not None


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n, cap=2.0) for n in (1, 2, 3, 4, 5, 50)] == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


# --- a dead letter too large for its DLQ ------------------------------------------------------------------


def test_a_stub_keeps_a_prefix_and_says_what_is_missing() -> None:
    source = Source("order.placed", 3, 41, b"o-1", b"x" * 300_000)
    headers = headers_for(source, "orders", "event larger than 524288 bytes", "invalid")
    key, value, stub_headers = stub_of(source, headers, "[Error 10] MessageSizeTooLargeError")
    assert key == b"o-1" and value == b"x" * STUB_PREFIX_BYTES
    named = dict(stub_headers)
    assert named[HEADER_STUB] == b"true"
    assert named[HEADER_ORIGINAL_SIZE] == b"300000"
    assert named[HEADER_STUB_REASON] == b"[Error 10] MessageSizeTooLargeError"
    assert set(dict(headers)) < set(named), "the letter's own headers (origin, reason) are kept"


def test_a_stub_cuts_a_huge_key_and_never_sends_neither_key_nor_value() -> None:
    key, value, headers = stub_of(Source("t", 0, 0, b"k" * 5000, None), [], "too large")
    assert key == b"k" * STUB_PREFIX_BYTES and value is None
    assert dict(headers)[HEADER_ORIGINAL_KEY_SIZE] == b"5000"
    key, value, _ = stub_of(Source("t", 0, 0, None, None), [], "too large")
    assert (key, value) == (None, b"")


def test_a_stub_reads_as_one_and_says_it_is_not_redriven() -> None:
    source = Source("order.placed", 3, 41, b"o-1", b"y" * 5000)
    key, value, headers = stub_of(source, headers_for(source, "orders", "too big", "invalid"), "MessageSizeTooLarge")
    record = ConsumerRecord("order.placed.dlq", 1, 7, 0, 0, key, value, None, 0, 0, headers)
    letter = DeadLetter.from_record(record, "order.placed.dlq")
    assert (letter.stub, letter.original_size, letter.stub_reason) == (True, 5000, "MessageSizeTooLarge")
    assert f"only the first {STUB_PREFIX_BYTES} of 5000 bytes kept" in describe(letter)
    plain = DeadLetter.from_record(ConsumerRecord("order.placed.dlq", 1, 8, 0, 0, b"k", b"{", None, 0, 0, []),
                                   "order.placed.dlq")
    assert not plain.stub and "STUB" not in describe(plain)
