"""Model builders: locally constructed checkpoints for tests and smoke runs."""
