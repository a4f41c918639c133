"""Pipeline stages (ExampleGen, synthetic data) and the `mtrank` command line."""
