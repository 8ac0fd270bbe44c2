"""The streaming flow behind ``freshet run``: :func:`~freshet.stream.pipeline.build_flow` wires
Kafka -> decode -> engine shards -> Redis + Parquet + dead letters as a Bytewax dataflow, with
its IO in :mod:`.connectors` (:class:`~freshet.stream.connectors.KafkaIO`), dead letters in
:mod:`.deadletter`, Prometheus metrics in :mod:`.metrics`, Kafka clients in
:mod:`.kafka_clients` and the graceful stop on SIGTERM/SIGINT in :mod:`.shutdown`."""
