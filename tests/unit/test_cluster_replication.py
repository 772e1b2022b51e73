"""How the topic catalogue sizes replication to the cluster it is created on (issue 19 item 2)."""

from __future__ import annotations

import pytest

from orderflow.infra import kafka
from orderflow.infra.ports import InfraError
from orderflow.stack import service_env, wanted_topics


@pytest.mark.parametrize(("brokers", "expected"), [(1, (1, 1)), (2, (2, 1)), (3, (3, 2)), (5, (3, 2))])
def test_replication_is_three_copies_with_two_in_sync_from_three_brokers(brokers: int, expected: tuple) -> None:
    assert kafka.replication_for(brokers) == expected


def test_every_topic_and_dlq_asks_two_in_sync_replicas_on_three_brokers() -> None:
    wanted = wanted_topics(partitions=3, brokers=3)
    assert wanted and all(configs.get("min.insync.replicas") == "2" for _, _, configs in wanted)
    assert {name for name, _, _ in wanted} == {name for name, _, _ in wanted_topics(partitions=3)}


def test_a_single_broker_keeps_the_brokers_default_min_isr() -> None:
    assert not any("min.insync.replicas" in configs for _, _, configs in wanted_topics(partitions=3, brokers=1))


def test_the_services_get_every_broker_and_the_clusters_replication() -> None:
    state = {
        "kafka": {"bootstrap": "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "brokers": 3},
        "postgres": {"url": "postgresql://db/orderflow"},
        "smtp": {"host": "127.0.0.1", "port": 25},
        "backoffice_token": "token",
        "topic_partitions": 8,
    }
    env = service_env(state)
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"
    assert env["TOPIC_REPLICATION_FACTOR"] == "3"
    single = service_env({**state, "kafka": {"bootstrap": "127.0.0.1:1"}})
    assert single["TOPIC_REPLICATION_FACTOR"] == "1"


def test_a_clusters_nodes_share_one_static_quorum_and_restart_from_their_state(tmp_path) -> None:
    node = kafka.KafkaHandle(
        tmp_path / "kafka-2",
        9093,
        9094,
        tmp_path / "kafka-2" / "data",
        node_id=2,
        voters="1@127.0.0.1:9001,2@127.0.0.1:9094,3@127.0.0.1:9003",
        cluster_id="abc",
        cluster_size=3,
    )
    node._write_config()
    props = dict(line.split("=", 1) for line in node.config_file.read_text().splitlines())
    assert props["node.id"] == "2" and props["controller.quorum.voters"] == node.voters
    assert "controller.quorum.bootstrap.servers" not in props
    assert (props["offsets.topic.replication.factor"], props["min.insync.replicas"]) == ("3", "2")
    again = kafka.KafkaHandle.from_state(node.to_state())
    assert (again.node_id, again.voters, again.cluster_id, again.cluster_size) == (2, node.voters, "abc", 3)


def test_a_data_folder_with_a_comma_is_refused_in_one_line(tmp_path) -> None:
    """Kafka's log.dirs is a comma-separated list: such a folder would start a broker that dies on a stack trace."""
    node = kafka.KafkaHandle(tmp_path / "run,2", 9093, 9094, tmp_path / "run,2" / "kafka-data")
    with pytest.raises(InfraError, match="holds a comma"):
        node._write_config()
    assert not node.config_file.exists()
