"""What a failed send to Kafka means for the message: send it again later, or set it aside. A pure rule.

- **permanent**: the message or its topic is at fault and waiting will not cure it (too large for the topic or the
  producer, topic missing or invalid, writing to it denied, refused by a broker policy). The outbox relay parks such a
  row and goes on with the next ones; a dead letter that is too large goes out as a stub.
- **transient**: the broker, the network or the producer itself is away, slow or misconfigured (connection refused, a
  timeout, a leader moving, wrong credentials, the producer stopping). Every message would fail the same way, so no
  message is blamed: the sender waits with capped backoff and tries the same messages again.

aiokafka marks its errors with `retriable`; that flag alone is not the answer (`KafkaTimeoutError` and
`BrokerNotAvailableError` are not marked retriable, `UnknownTopicOrPartitionError` is), hence the two explicit lists
below. A Kafka error on neither list is permanent when aiokafka does not call it retriable; anything that is not a
Kafka error (an `OSError`, our own timeout) is transient. faust wraps the client's errors in `ProducerSendError`
(`raise ... from exc`): the cause chain is searched.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import errors as ke

PERMANENT: tuple[type[ke.KafkaError], ...] = (
    ke.MessageSizeTooLargeError,  # larger than the topic's max.message.bytes, or the producer's max_request_size
    ke.RecordTooLargeError,
    ke.RecordListTooLargeError,
    ke.UnknownTopicOrPartitionError,  # while queueing: after a bounded wait for the topic's metadata
    ke.InvalidTopicError,
    ke.TopicAuthorizationFailedError,
    ke.PolicyViolationError,
    ke.CorruptRecordException,
    ke.InvalidTimestampError,
    ke.UnsupportedForMessageFormatError,
)
"""About this message or its topic: parking it lets the others through."""

TOO_LARGE: tuple[type[ke.KafkaError], ...] = (
    ke.MessageSizeTooLargeError, ke.RecordTooLargeError, ke.RecordListTooLargeError,
)

TRANSIENT: tuple[type[ke.KafkaError], ...] = (
    # the broker or the network, slow or away
    ke.KafkaTimeoutError,
    ke.KafkaUnavailableError,
    ke.BrokerNotAvailableError,
    ke.ReplicaNotAvailableError,
    ke.UnknownError,
    ke.QuotaViolationError,
    ke.ReassignmentInProgress,
    ke.OperationNotAttempted,
    ke.LogDirNotFound,
    ke.ListenerNotFound,
    # the producer or the client's settings: every message would fail alike, none is to blame
    ke.ProducerClosed,
    ke.ProducerFenced,
    ke.IllegalStateError,
    ke.KafkaConfigurationError,
    ke.UnsupportedCodecError,
    ke.UnrecognizedBrokerVersion,
    ke.IncompatibleBrokerVersion,
    ke.UnsupportedVersionError,
    ke.InvalidRequestError,
    ke.InvalidRequiredAcksError,
    ke.AuthenticationMethodNotSupported,
    ke.AuthenticationFailedError,
    ke.SaslAuthenticationFailed,
    ke.UnsupportedSaslMechanismError,
    ke.IllegalSaslStateError,
    ke.SecurityDisabled,
    ke.ClusterAuthorizationFailedError,
    ke.TransactionalIdAuthorizationFailed,
    ke.OutOfOrderSequenceNumber,
    ke.InvalidProducerEpoch,
    ke.InvalidProducerIdMapping,
    ke.UnknownProducerId,
    ke.InvalidTxnState,
    ke.InvalidTransactionTimeout,
    ke.TransactionCoordinatorFenced,
    ke.ConcurrentTransactions,
)
"""Not marked retriable by aiokafka, but no fault of the message."""

REASON_CHARS = 500


@dataclass(frozen=True)
class SendFailure:
    permanent: bool
    reason: str
    """One line: the Kafka error's name and text (no configuration, so no credentials)."""

    @property
    def transient(self) -> bool:
        return not self.permanent


def kafka_error_of(exc: BaseException) -> ke.KafkaError | None:
    """The Kafka error behind `exc`: itself, or the first one in its cause chain (faust's ProducerSendError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ke.KafkaError):
            return current
        seen.add(id(current))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return None


def _one_line(exc: BaseException) -> str:
    try:
        text = str(exc).strip()
    except Exception:  # noqa: BLE001 - e.g. aiokafka's BrokerResponseError base class has no errno to show
        text = ""
    if not text:
        return type(exc).__name__
    first = text.splitlines()[0]
    if not isinstance(exc, ke.KafkaError):  # KafkaError's str already names its class
        first = f"{type(exc).__name__}: {first}"
    return first[:REASON_CHARS]


def classify(exc: BaseException, *, at_delivery: bool = False) -> SendFailure:
    """Permanent (park this message) or transient (wait, then send the same messages again).

    `at_delivery`: the broker's answer to a message the producer had queued. An unknown topic or partition is then
    transient: the topic had metadata when the message was queued, so the broker is not serving the partition at
    the moment (a restart, a leader moving); were the topic deleted, the next attempt fails while queueing."""
    kafka = kafka_error_of(exc)
    if kafka is None:
        return SendFailure(False, _one_line(exc))
    reason = _one_line(kafka)
    if at_delivery and isinstance(kafka, ke.UnknownTopicOrPartitionError):
        return SendFailure(False, reason)
    if isinstance(kafka, PERMANENT):
        return SendFailure(True, reason)
    if isinstance(kafka, TRANSIENT) or kafka.retriable:
        return SendFailure(False, reason)
    return SendFailure(True, reason)


def is_too_large(exc: BaseException) -> bool:
    """The message does not fit (the producer's max_request_size or the topic's max.message.bytes)."""
    return isinstance(kafka_error_of(exc), TOO_LARGE)
