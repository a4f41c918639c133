"""Pipeline stages (ExampleGen, synthetic data) and the `mtrank` command line."""
IN_PROCESS = "in-process"  # the name of Beam's FnApiRunner in this process, for --runner
