"""``freshet backfill``: replay a view's topic over a time range through the live flow's code.

:mod:`.plan` turns a range into per-partition offsets (no Bytewax import: ``--dry-run`` stays
light), :mod:`.replay` runs one replay process (a Bytewax worker), :mod:`.runner` spawns and
watches the processes of a run and replaces the range's earlier segments."""
