"""Feature definitions: the DSL (:mod:`.definitions`: ``FeatureView``, ``Feature``, ``Entity``,
``Source``, ``Aggregation``), the registry that finds views in ``FRESHET_VIEWS`` modules
(:mod:`.registry`) and the shipped demo views (:mod:`.views`). Pure Python: no Kafka, Redis or
Bytewax here."""
