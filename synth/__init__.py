"""Synthetic data generators for tests, benchmarks and experiments (`mtrank synth ...`)."""
