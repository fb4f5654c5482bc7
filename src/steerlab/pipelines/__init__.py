"""Workflows built on the core: jobs behind the CLI, the demo, the reliability sweep."""
