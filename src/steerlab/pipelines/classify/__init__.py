"""Classification steering: per-group vectors, sign check, sweep, report."""
