"""Real Kafka brokers (KRaft, each node broker+controller) run from Maven Central jars with the machine's Java: one
node (`start`), or a cluster of several on loopback whose nodes are also the controller quorum's voters
(`start_cluster`: three nodes give a 3-voter quorum, replication factor 3 and min.insync.replicas 2, as production).

No Docker engine exists on the development and CI machines, so each broker runs as a plain JVM process. The jars are
fetched once into a cache outside the repository; each start uses fresh ports and its own data folder.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from orderflow.infra.ports import LOCALHOST, InfraError, ProcRef, free_port, run_coro, tail, wait_until

KAFKA_VERSION = "4.3.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
POM = REPO_ROOT / "infra" / "kafka" / "pom.xml"
MAX_MESSAGE_BYTES = 2 * 1024 * 1024
START_TIMEOUT = 90.0


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "orderflow" / f"kafka-{KAFKA_VERSION}"


def libs_dir() -> Path:
    return cache_dir() / "libs"


REQUIRED_JARS = (f"kafka_2.13-{KAFKA_VERSION}.jar", f"kafka-tools-{KAFKA_VERSION}.jar")


def ensure_jars() -> Path:
    """Fetch the broker's and the tools' jars with Maven once; a download is only taken as done after an atomic
    rename. A cache made before the tools were in the pom gets the missing jars added beside the others (added, never
    replaced: a running broker reads its jars from there)."""
    libs = libs_dir()
    if all((libs / jar).exists() for jar in REQUIRED_JARS):
        return libs
    if not shutil.which("mvn"):
        raise InfraError("Maven (mvn) is needed to fetch the Kafka jars: apt-get install -y maven")
    libs.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs-partial-", dir=libs.parent))
    try:
        subprocess.run(
            ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             "-DincludeScope=runtime", f"-DoutputDirectory={staging}"],
            check=True,
        )
        if not (staging / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
            raise InfraError(f"mvn finished but kafka_2.13-{KAFKA_VERSION}.jar is missing from {staging}")
        if libs.exists():  # another run finished first, or an older cache without the tools
            for jar in staging.iterdir():
                if not (libs / jar.name).exists():
                    shutil.copy2(jar, libs / f".{jar.name}.partial")
                    (libs / f".{jar.name}.partial").rename(libs / jar.name)
            shutil.rmtree(staging)
        else:
            staging.rename(libs)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return libs


def _cluster_id() -> str:
    """Kafka's cluster id format: a UUID as URL-safe base64 without padding. Never starting with "-" (as Kafka's
    own Uuid.randomUuid), which the storage tool's command line would read as an option (1 start in 64 failed)."""
    while (cluster_id := base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()).startswith("-"):
        pass
    return cluster_id


_LOG4J2 = """\
status = warn
name = orderflow-kafka
shutdownHook = disable
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
"""


def replication_for(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a cluster of `brokers`: 3 and 2 from three brokers on (a write
    acknowledged by acks=all survives losing any one broker, and one broker down still takes writes); fewer brokers
    cannot hold three copies, and their min ISR is 1 so that the topics stay writable at all."""
    replication = max(1, min(3, brokers))
    return replication, 2 if replication >= 3 else 1


@dataclass
class KafkaHandle:
    """One local broker: its ports, folders and process. `restart()` keeps ports and data (for fault tests).

    Alone (`voters` None) it is a one-voter quorum formatted `--standalone`; in a cluster, `voters` is the static
    quorum (`id@host:port,...`) every node shares, `cluster_id` the id all were formatted with and `cluster_size`
    what the internal topics' replication is sized for."""

    run_dir: Path
    port: int
    controller_port: int
    data_dir: Path
    proc: ProcRef | None = None
    started_in: float | None = None
    node_id: int = 1
    voters: str | None = None
    cluster_id: str | None = None
    cluster_size: int = 1
    _popen: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "kafka.log"

    @property
    def stdout_file(self) -> Path:
        return self.run_dir / "kafka.out"

    @property
    def config_file(self) -> Path:
        return self.run_dir / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.run_dir / "kafka-log4j2.properties"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def _java(self, main: str, *args: str) -> list[str]:
        java = shutil.which("java")
        if not java:
            raise InfraError("Java 17 is needed to run the Kafka broker: apt-get install -y openjdk-17-jre-headless")
        # C1 only (TieredStopAtLevel=1): on this 2-core machine shared with every service, C2's compiling cost
        # more than its faster code saved at these volumes. bench/run.py: the broker used 15.5-15.7 CPU seconds per
        # fresh run in three runs against 16.5-24.0 in five before (idle 3.3-4.7 % of a core against 5.6-6.3 %);
        # after a 30 s warm-up, 2.5 % idle against 3.9 %, 22.7 % at 100 orders/s against 25.1 %, 12.3 % at 500
        # against 20.6 % (README, benchmark figures).
        return [java, "-Xmx512m", "-Xms256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={self.log4j_file}", "-cp",
                str(libs_dir() / "*"), main, *args]

    def _write_config(self) -> None:
        if "," in str(self.data_dir):  # else the broker reads its data folder as two and dies with a stack trace
            raise InfraError(f"the broker's data folder {self.data_dir} holds a comma, which Kafka's log.dirs reads "
                             f"as a list of folders: use another ORDERFLOW_RUN_DIR")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        replication, min_isr = replication_for(self.cluster_size)
        quorum = ({"controller.quorum.voters": self.voters} if self.voters
                  else {"controller.quorum.bootstrap.servers": f"{LOCALHOST}:{self.controller_port}"})
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            **quorum,
            "listeners": f"PLAINTEXT://{LOCALHOST}:{self.port},CONTROLLER://{LOCALHOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{LOCALHOST}:{self.port},CONTROLLER://{LOCALHOST}:{self.controller_port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "offsets.topic.replication.factor": str(replication),
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": str(replication),
            "transaction.state.log.min.isr": str(min_isr),
            "share.coordinator.state.topic.replication.factor": str(replication),
            "share.coordinator.state.topic.min.isr": str(min_isr),
            # Topics created without explicit settings (faust's changelogs, its leader topic) get the cluster's.
            "default.replication.factor": str(replication),
            "min.insync.replicas": str(min_isr),
            "group.initial.rebalance.delay.ms": "0",
            # The KRaft controller appends a no-op record to the metadata log every 500 ms by default; alone and
            # idle, that was 3.5 % of a core, 1.9 % without it. Every 5 s keeps the liveness check it serves.
            "metadata.max.idle.interval.ms": "5000",
            "num.partitions": "8",
            "auto.create.topics.enable": "false",
            "message.max.bytes": str(MAX_MESSAGE_BYTES),
            "replica.fetch.max.bytes": str(MAX_MESSAGE_BYTES),
            "log.dirs": str(self.data_dir),
            "log.retention.hours": "168",
        }
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        self.log4j_file.write_text(_LOG4J2.format(log=self.log_file))

    def _format_storage(self) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A static quorum (controller.quorum.voters) is formatted as it is; a lone node bootstraps a one-voter one.
        quorum = [] if self.voters else ["--standalone"]
        cmd = self._java("kafka.tools.StorageTool", "format", "-t", self.cluster_id or _cluster_id(), "-c",
                         str(self.config_file), *quorum)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise InfraError(f"kafka storage format failed:\n{result.stdout}\n{result.stderr}")

    def start(self, timeout: float = START_TIMEOUT) -> KafkaHandle:
        """Start the JVM detached and return once a metadata request answers with a registered broker."""
        if self.alive():
            return self
        begun = time.monotonic()
        ensure_jars()
        self._write_config()
        self._format_storage()
        with open(self.stdout_file, "ab") as out:
            self._popen = subprocess.Popen(
                self._java("kafka.Kafka", str(self.config_file)),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.run_dir,
            )
        self.proc = ProcRef.of(self._popen.pid)

        def died() -> str | None:
            if self._popen is not None and self._popen.poll() is not None:
                return (f"broker exited with code {self._popen.returncode}; see {self.log_file}\n"
                        f"{tail(self.stdout_file)}\n{tail(self.log_file)}")
            return None

        # In a cluster, ready = this node is among the brokers its own listener reports (registered and unfenced).
        node = self.node_id if self.voters else None
        try:
            wait_until(lambda: broker_ready(self.bootstrap, node_id=node), timeout=timeout, interval=0.2,
                       what=f"Kafka broker at {self.bootstrap} (log: {self.log_file})", abort=died)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - begun
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a clean controlled shutdown), then SIGKILL if it hangs; no JVM is left behind."""
        if self.proc is not None:
            self.proc.stop(timeout=timeout)
        if self._popen is not None:
            self._popen.wait()
            self._popen = None

    def kill(self) -> None:
        """Crash the broker (SIGKILL): for tests of what survives an unclean stop."""
        import signal

        if self.proc is not None:
            self.proc.stop(sig=signal.SIGKILL)
        if self._popen is not None:
            self._popen.wait()
            self._popen = None

    def restart(self, timeout: float = START_TIMEOUT) -> KafkaHandle:
        """Same ports, same data: clients reconnect to the address they know and find their offsets."""
        self.stop()
        return self.start(timeout=timeout)

    def to_state(self) -> dict:
        return {
            "bootstrap": self.bootstrap, "port": self.port, "controller_port": self.controller_port,
            "run_dir": str(self.run_dir), "data_dir": str(self.data_dir), "log": str(self.log_file),
            "process": self.proc.to_state() if self.proc else None, "started_in": self.started_in,
            "node_id": self.node_id, "voters": self.voters, "cluster_id": self.cluster_id,
            "cluster_size": self.cluster_size,
        }

    @classmethod
    def from_state(cls, state: dict) -> KafkaHandle:
        proc = ProcRef.from_state(state["process"]) if state.get("process") else None
        return cls(Path(state["run_dir"]), int(state["port"]), int(state["controller_port"]),
                   Path(state["data_dir"]), proc, state.get("started_in"), int(state.get("node_id", 1)),
                   state.get("voters"), state.get("cluster_id"), int(state.get("cluster_size", 1)))


@dataclass
class KafkaCluster:
    """Several local brokers on loopback, each also a voter of the controller quorum; `nodes[i].node_id == i + 1`.

    `bootstrap` lists every broker, as clients of a real cluster are given it. Fault tests `kill()` one node and
    `start()` it again (same ports, same data)."""

    nodes: list[KafkaHandle]
    started_in: float | None = None

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def log_file(self) -> Path:
        return self.nodes[0].log_file

    def node(self, node_id: int) -> KafkaHandle:
        return next(node for node in self.nodes if node.node_id == node_id)

    def start(self, timeout: float = START_TIMEOUT) -> KafkaCluster:
        """Start every node at once (none is ready before a majority of voters runs), then wait until the cluster
        lists all of them."""
        begun = time.monotonic()
        ensure_jars()
        try:
            with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
                for future in [pool.submit(node.start, timeout) for node in self.nodes]:
                    future.result()
            wait_until(lambda: registered(self.bootstrap) >= len(self.nodes), timeout=timeout, interval=0.2,
                       what=f"{len(self.nodes)} brokers registered at {self.bootstrap}")
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - begun
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Every node, in parallel (a controlled shutdown waits for its partitions' leadership to move)."""
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            for future in [pool.submit(node.stop, timeout) for node in self.nodes]:
                future.result()

    def to_state(self) -> dict:
        return {"bootstrap": self.bootstrap, "brokers": len(self.nodes), "started_in": self.started_in,
                "log": str(self.log_file), "nodes": [node.to_state() for node in self.nodes]}

    @classmethod
    def from_state(cls, state: dict) -> KafkaCluster:
        return cls([KafkaHandle.from_state(node) for node in state["nodes"]], state.get("started_in"))


async def _describe(bootstrap: str, timeout_ms: int) -> dict:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    try:
        await admin.start()
        return await admin.describe_cluster()
    finally:
        await admin.close()


def _brokers(bootstrap: str, timeout_ms: int) -> list[dict]:
    import logging

    # aiokafka logs every refused connection at ERROR while the JVM is still starting; that noise says nothing.
    logger = logging.getLogger("aiokafka")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        info = run_coro(_describe(bootstrap, timeout_ms))
    finally:
        logger.setLevel(previous)
    return list(info.get("brokers") or [])


def broker_ready(bootstrap: str, timeout_ms: int = 3000, *, node_id: int | None = None) -> bool:
    """Ready = a metadata request answers and lists at least one broker (so topic creation will work); with
    `node_id`, that broker among them (the metadata lists only registered, unfenced brokers)."""
    brokers = _brokers(bootstrap, timeout_ms)
    if node_id is None:
        return bool(brokers)
    return any(b.get("node_id") == node_id for b in brokers)


def registered(bootstrap: str, timeout_ms: int = 3000) -> int:
    """How many brokers the cluster's metadata lists now (0 when none answers)."""
    try:
        return len(_brokers(bootstrap, timeout_ms))
    except Exception:  # noqa: BLE001 - no answer yet counts as none registered
        return 0


def start(run_dir: Path | str, *, port: int | None = None, controller_port: int | None = None,
          timeout: float = START_TIMEOUT) -> KafkaHandle:
    """Start a fresh broker whose config, logs and data live under run_dir."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    controller_port = controller_port or free_port()
    while controller_port == port:
        controller_port = free_port()
    handle = KafkaHandle(run_dir, port, controller_port, run_dir / "kafka-data")
    return handle.start(timeout=timeout)


def start_cluster(run_dir: Path | str, brokers: int = 3, *, timeout: float = START_TIMEOUT) -> KafkaCluster:
    """Start a fresh cluster of `brokers` nodes (each broker and controller voter) under run_dir/kafka-<id>/."""
    if brokers < 1:
        raise InfraError(f"a cluster needs at least one broker, not {brokers}")
    run_dir = Path(run_dir)
    taken: set[int] = set()

    def fresh_port() -> int:
        while (port := free_port()) in taken:
            pass
        taken.add(port)
        return port

    ports = [(fresh_port(), fresh_port()) for _ in range(brokers)]
    voters = ",".join(f"{i}@{LOCALHOST}:{controller}" for i, (_port, controller) in enumerate(ports, start=1))
    cluster_id = _cluster_id()
    nodes = [KafkaHandle(run_dir / f"kafka-{i}", port, controller, run_dir / f"kafka-{i}" / "kafka-data",
                         node_id=i, voters=voters, cluster_id=cluster_id, cluster_size=brokers)
             for i, (port, controller) in enumerate(ports, start=1)]
    return KafkaCluster(nodes).start(timeout=timeout)


def main() -> None:
    """`python -m orderflow.infra.kafka [RUN_DIR]`: start a broker, print its address and start time, stop on Enter."""
    import sys

    run_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="orderflow-kafka-"))
    handle = start(run_dir)
    print(json.dumps({"bootstrap": handle.bootstrap, "started_in_s": round(handle.started_in or 0, 2)}))
    try:
        input("broker running; press Enter to stop\n")
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        handle.stop()


if __name__ == "__main__":
    main()
