"""Kafka records to engine events: :func:`~freshet.decode.decoder.decoder_for` a view, then
``decode(batch)`` gives events grouped for the engine and dead letters for what cannot be used.
Avro (schemaless or the Confluent wire format with :mod:`.schema_registry`) and JSON; flat Avro
records are read by a generated reader (:mod:`.avro_reader`) and a C loop (``_fastdecode``)."""
