"""`python -m limaml_tf.cli ...` == `limaml ...`."""

import sys

from limaml_tf.cli import main

sys.exit(main())
