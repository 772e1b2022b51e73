"""Local infrastructure without Docker: a Kafka broker from Maven jars, a PostgreSQL cluster, a mail sink."""
