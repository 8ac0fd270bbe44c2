"""Avro schemas of the event topics (``*.avsc``), shipped with the package."""
