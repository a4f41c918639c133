"""The shared floor under the stages: Beam plumbing, TFRecord framing, metrics and the artifact
layout. Nothing here imports another package of the project."""

# The name of Beam's FnApiRunner in this process, for --runner; here, not in `beam`, so the
# command line's --help needs no Beam import.
IN_PROCESS = "in-process"
