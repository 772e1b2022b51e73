#!/bin/sh
# Formats the data folder once (a one-voter KRaft quorum), then runs the broker in the foreground.
set -eu
java() {
    exec_or_run="$1"; shift
    $exec_or_run /usr/bin/java -Xmx512m -Xms256m -XX:+UseSerialGC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile=/opt/kafka/log4j2.properties -cp '/opt/kafka/libs/*' "$@"
}
if [ ! -f /var/lib/kafka/data/meta.properties ]; then
    java "" kafka.tools.StorageTool format -t "${KAFKA_CLUSTER_ID:-5LhXtv_RX6WPuUetkvvODQ}" \
        -c /opt/kafka/server.properties --standalone
fi
java exec kafka.Kafka /opt/kafka/server.properties
