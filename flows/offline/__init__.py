"""The offline log put to use: point-in-time training sets (:mod:`.historical`, DuckDB as-of
joins over the Parquet segments) and the check and repair of Redis against the log
(:mod:`.reconcile`: ``freshet verify`` and ``freshet reconcile``)."""
