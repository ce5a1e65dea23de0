"""Contract suites: one set of behaviours, run against every adapter of a port."""
