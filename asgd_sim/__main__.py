"""`python -m asgd_sim ...`: the `asgd-sim` command, for environments without its entry point."""

import sys

from asgd_sim.cli import main

sys.exit(main())
