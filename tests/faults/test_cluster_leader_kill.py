"""A 3-broker KRaft cluster loses the leader of a busy partition mid-load (SIGKILL), stays one broker short for
20 s, and gets it back: nothing lost, nothing applied twice, no dead letter.

The cluster is what `orderflow up --brokers 3` runs (`orderflow.infra.kafka.start_cluster`): three nodes on loopback,
each a broker and a voter of the controller quorum, every catalogue topic with replication factor 3 and
`min.insync.replicas=2`. Every producer on the path writes with acks=all and idempotence (the storefront's
`StorefrontProducer`, the workers' faust producer through `faust_adapter.IdempotentProducer`), so a write the old
leader acknowledged is on a second replica, and a retried batch is not written twice by the new leader. The workers
are given the full bootstrap list.

The broker killed is the leader of `order.placed` partition 0 (every service's work starts on that topic, and each
of its 8 partitions takes a share of the load); the fault waits until the cluster has elected another leader for it,
then holds the broker down for 20 s, starts it again on the same ports and data and waits until it is back in that
partition's in-sync replicas. The settle and invariants are the fault suite's (`harness.settle`); the load carries no
bad message, so the dead-letter check demands that none of the namespace's events was dead-lettered.

Costs 4.5 to 6 minutes on the shared 2-core machine (measured 260-353 s with a load average of 17-38: the three JVMs
start in 60-110 s, the killed one restarts in about 70 s of which 16 s are its unclean log recovery), so it runs in
the fault loop (`LOOP_TESTS=tests/faults/test_cluster_leader_kill.py tests/faults/loop.sh 3`), not in `make test`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from contracts import topics
from orderflow import stack as local_stack
from orderflow.infra import kafka
from tests.faults.harness import FaultStack, fault_stack, hold, play

pytestmark = [pytest.mark.slow, pytest.mark.fault_loop]

BROKERS = 3
DOWN_SECONDS = 20.0
JVM_START_TIMEOUT = 180.0
"""A broker JVM took up to 110 s to start here on two cores shared with other test runs (90 s is the default)."""
BUSY_TOPIC = topics.ORDER_PLACED.name
BUSY_PARTITION = 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kafka.KafkaCluster]:
    started = kafka.start_cluster(tmp_path_factory.mktemp("kafka-cluster"), BROKERS, timeout=JVM_START_TIMEOUT)
    print(f"\n{BROKERS}-broker cluster at {started.bootstrap} started in {started.started_in:.1f} s")
    try:
        local_stack.create_topics(started.bootstrap)
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
async def stack(
    cluster: kafka.KafkaCluster, database_url: str, mailsink, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FaultStack]:
    replication, _min_isr = kafka.replication_for(BROKERS)
    async with fault_stack(
        cluster.bootstrap,
        database_url,
        mailsink,
        tmp_path_factory.mktemp("cluster-faults"),
        name="cluster",
        worker_settings={"TOPIC_REPLICATION_FACTOR": str(replication)},
    ) as prepared:
        yield prepared


async def partition_state(bootstrap: str, topic: str, partition: int) -> tuple[int, list[int], list[int]]:
    """(leader, replicas, in-sync replicas) of one partition, as the cluster's metadata says now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    info = next(p for p in described["partitions"] if p["partition"] == partition)
    return info["leader"], list(info["replicas"]), list(info["isr"])


async def wait_partition(bootstrap: str, condition, what: str, timeout: float = 90.0) -> tuple[int, list, list]:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = await partition_state(bootstrap, BUSY_TOPIC, BUSY_PARTITION)
            if condition(*state):
                return state
        except Exception as exc:  # noqa: BLE001 - a broker going away mid-request: ask again
            state = exc  # type: ignore[assignment]
        assert time.monotonic() < deadline, f"{what}: not after {timeout:.0f}s (last seen {state!r})"
        await asyncio.sleep(0.2)  # polling interval of a deadline loop


async def test_topics_are_replicated_three_times_with_min_isr_two(cluster: kafka.KafkaCluster) -> None:
    # The broker asked may not know a topic created a moment ago yet (seen in a loop run: no partition 0): the
    # condition is waited for, and a cluster that does not replicate three times fails it at the deadline.
    leader, replicas, isr = await wait_partition(
        cluster.bootstrap, lambda _leader, replicas, isr: sorted(replicas) == [1, 2, 3] and sorted(isr) == [1, 2, 3],
        f"{BUSY_TOPIC}[{BUSY_PARTITION}] on three brokers, all in sync", timeout=60)
    assert leader in replicas
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        overrides = await local_stack._topic_overrides(admin, [BUSY_TOPIC, topics.ORDER_STATUS.dlq])
    finally:
        await admin.close()
    assert {name: own.get("min.insync.replicas") for name, own in overrides.items()} == {
        BUSY_TOPIC: "2",
        topics.ORDER_STATUS.dlq: "2",
    }


async def test_leader_of_a_busy_partition_sigkilled_for_20s_mid_load(
    cluster: kafka.KafkaCluster, stack: FaultStack
) -> None:
    assert stack.env["KAFKA_BOOTSTRAP_SERVERS"].count(",") == BROKERS - 1, "the workers get every broker"
    seen: dict[str, object] = {}

    async def fault() -> None:
        leader, _replicas, _isr = await partition_state(cluster.bootstrap, BUSY_TOPIC, BUSY_PARTITION)
        victim = cluster.node(leader)
        survivors = ",".join(n.bootstrap for n in cluster.nodes if n is not victim)
        began = time.monotonic()
        await asyncio.to_thread(victim.kill)
        try:
            new_leader, _, isr = await wait_partition(
                survivors,
                lambda lead, _r, isr: lead not in (leader, -1) and leader not in isr,
                f"a new leader for {BUSY_TOPIC}[{BUSY_PARTITION}] after broker {leader} was killed",
            )
            seen.update(
                killed=leader, new_leader=new_leader, isr_while_down=isr, elected_after=time.monotonic() - began
            )
            seen["health"] = await hold(stack, max(0.0, DOWN_SECONDS - (time.monotonic() - began)))
        finally:
            seen["down_for"] = time.monotonic() - began
            await asyncio.to_thread(victim.start, JVM_START_TIMEOUT)
        await wait_partition(
            cluster.bootstrap,
            lambda _l, _r, isr: leader in isr,
            f"broker {leader} back in the in-sync replicas of {BUSY_TOPIC}[{BUSY_PARTITION}]",
        )
        seen["back_in_isr_after"] = time.monotonic() - began

    run = await play(stack, "leader-kill", 606, fault, abandon_after=60, bad=None)
    print(
        f"\nleader kill: broker {seen['killed']} SIGKILLed, {BUSY_TOPIC}[{BUSY_PARTITION}] led by "
        f"{seen['new_leader']} after {seen['elected_after']:.1f}s (ISR {seen['isr_while_down']}), down "
        f"{seen['down_for']:.1f}s, back in ISR after {seen['back_in_isr_after']:.1f}s; "
        + ", ".join(f"{k} {v:.1f}s" for k, v in run.seconds.items())
    )
    assert seen["down_for"] >= DOWN_SECONDS
    assert seen["new_leader"] != seen["killed"]
