"""Plumbing with no domain knowledge: atomic file writes, JSONL and YAML reading with one-line
errors, run-directory names, packaged resources, hub reachability, the strict pydantic base and
the version. Private to steerlab: nothing here is part of the public API."""
