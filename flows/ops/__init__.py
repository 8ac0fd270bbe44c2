"""Operating freshet: the local Kafka + Redis stack without Docker (:mod:`.devstack`, its files
in :mod:`freshet.ops.stack`), ``freshet doctor`` (:mod:`.doctor`), the synthetic card stream of
the demo and benchmarks (:mod:`.generator`) and process helpers (:mod:`.processes`)."""
