"""`python -m experiments NAME [--scale quick|full] [--seeds N] [--out DIR]` (as `mtrank experiment`)."""

import os
import sys

# TensorFlow's C++ start-up notices would bury the progress lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from experiments.cli import main  # noqa: E402

sys.exit(main())
