"""`orderflow kafka-tool NAME ARGS...`: Kafka's own command-line tools (kafka-consumer-groups.sh and friends) from the
jars `orderflow up` already fetched with Maven (infra/kafka/pom.xml has kafka-tools at the broker's version).

The broker (`--bootstrap-server`) and its security settings (a `--command-config` file written from
KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_CAFILE, as the workers read them) are added unless given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from orderflow.infra.ports import InfraError
from orderflow.settings import KafkaSecurity, SettingsError, kafka_security

TOOLS = {
    "consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "topics": "org.apache.kafka.tools.TopicCommand",
    "get-offsets": "org.apache.kafka.tools.GetOffsetShell",
    "configs": "kafka.admin.ConfigCommand",
}
"""The shell scripts' names (kafka-<name>.sh) and their main classes in Kafka 4.3."""

_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def client_properties(security: KafkaSecurity) -> str:
    """The Java client's properties for the workers' security settings ("" for PLAINTEXT)."""
    lines = [] if security.protocol == "PLAINTEXT" else [f"security.protocol={security.protocol}"]
    if security.protocol.startswith("SASL"):

        def quoted(value: str | None) -> str:
            return '"' + (value or "").replace("\\", "\\\\").replace('"', '\\"') + '"'

        module = _LOGIN_MODULES[security.sasl_mechanism or "PLAIN"]
        lines += [
            f"sasl.mechanism={security.sasl_mechanism}",
            f"sasl.jaas.config={module} required username={quoted(security.sasl_username)} "
            f"password={quoted(security.sasl_password)};",
        ]
    if security.ssl_cafile:
        lines += ["ssl.truststore.type=PEM", f"ssl.truststore.location={security.ssl_cafile}"]
    return "\n".join(lines) + ("\n" if lines else "")


def command(tool: str, args: Sequence[str], bootstrap: str, config_file: Path | None) -> list[str]:
    from orderflow.infra.kafka import ensure_jars

    java = shutil.which("java")
    if not java:
        raise InfraError("Java is needed to run Kafka's tools: apt-get install -y default-jre-headless")
    cmd = [
        java,
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-Dlog4j2.level=warn",
        "-cp",
        str(ensure_jars() / "*"),
        TOOLS[tool],
        *args,
    ]
    if "--bootstrap-server" not in args:
        cmd += ["--bootstrap-server", bootstrap]
    if config_file is not None and "--command-config" not in args:
        cmd += ["--command-config", str(config_file)]
    return cmd


async def reachable(bootstrap: str) -> None:
    """Raise (one line, from the command line's handler) when the broker cannot be reached: Java's tools would retry
    for a minute and then print a stack trace."""
    from aiokafka.admin import AIOKafkaAdminClient

    from orderflow.ops.broker import options

    admin = AIOKafkaAdminClient(**options(bootstrap, request_timeout_ms=10000))
    try:
        await admin.start()
    finally:
        await admin.close()


def run(tool: str, args: Sequence[str], bootstrap: str) -> int:
    try:
        properties = client_properties(kafka_security())
    except SettingsError as exc:
        raise InfraError(str(exc)) from None
    if "--help" not in args and "--version" not in args:
        asyncio.run(reachable(bootstrap))
    with tempfile.TemporaryDirectory(prefix="orderflow-kafka-tool-") as folder:
        config_file = None
        if properties:
            config_file = Path(folder) / "client.properties"
            config_file.write_text(properties)
            os.chmod(config_file, 0o600)  # it may hold the SASL password
        return subprocess.run(command(tool, args, bootstrap, config_file), check=False).returncode


def add_parser(sub: argparse._SubParsersAction, bootstrap: Callable[[], str]) -> None:
    p = sub.add_parser(
        "kafka-tool",
        help="run one of Kafka's own tools (consumer-groups, topics, ...) on the broker",
        description="Kafka's command-line tools from the Maven-fetched jars, with --bootstrap-server "
        "and the workers' security settings added. Example: orderflow kafka-tool consumer-groups "
        "--describe --group orderflow-orders",
    )
    p.add_argument("tool", choices=sorted(TOOLS), help="kafka-<tool>.sh: %(choices)s")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the tool's own arguments (--help lists them)")
    p.set_defaults(func=lambda args: run(args.tool, args.args, bootstrap()))
