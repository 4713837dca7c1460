"""`python -m limaml_cli ...` == `limaml ...`."""

import sys

from limaml_cli import main

sys.exit(main())
