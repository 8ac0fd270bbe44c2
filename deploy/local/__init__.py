"""The local stack's files (Maven POM of the Kafka jars, broker properties, Log4j config), shipped
in the wheel as ``freshet.ops.stack`` and read with ``importlib.resources`` by
``freshet.ops.devstack``; Docker and Kubernetes users find them here too."""
