"""Classification steering (seed 004): per-group vectors, sign check, sweep, report."""
