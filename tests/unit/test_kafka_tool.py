"""`orderflow kafka-tool`: the Java client properties made from the workers' security settings."""

from __future__ import annotations

from pathlib import Path

from orderflow.ops.kafka_tool import client_properties, command
from orderflow.settings import KafkaSecurity


def test_plaintext_needs_no_properties() -> None:
    assert client_properties(KafkaSecurity()) == ""


def test_sasl_scram_over_tls_with_a_pem_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    props = client_properties(KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "orders", 'pa"ss\\word', str(ca)))
    assert props.splitlines() == [
        "security.protocol=SASL_SSL",
        "sasl.mechanism=SCRAM-SHA-512",
        'sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="orders" '
        'password="pa\\"ss\\\\word";',
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={ca}",
    ]


def test_sasl_plain_uses_the_plain_login_module() -> None:
    props = client_properties(KafkaSecurity("SASL_PLAINTEXT", "PLAIN", "u", "p"))
    assert "org.apache.kafka.common.security.plain.PlainLoginModule required" in props


def test_the_broker_and_config_are_added_unless_given(monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    monkeypatch.setattr("orderflow.infra.kafka.ensure_jars", lambda: tmp_path)
    cmd = command("consumer-groups", ["--list"], "b:9092", tmp_path / "c.properties")
    assert cmd[-6:] == [
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        "--list",
        "--bootstrap-server",
        "b:9092",
        "--command-config",
        str(tmp_path / "c.properties"),
    ]
    given = command("topics", ["--bootstrap-server", "x:1", "--list"], "b:9092", None)
    assert given[-4:] == ["org.apache.kafka.tools.TopicCommand", "--bootstrap-server", "x:1", "--list"]
