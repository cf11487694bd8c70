"""`python -m slmpack.loadgen`: see slmpack.loadgen.cli."""

import sys

from slmpack.loadgen.cli import load_main

sys.exit(load_main())
