"""`python -m slmpack.launcher`."""

import sys

from slmpack.launcher.app import launcher_main

sys.exit(launcher_main(sys.argv[1:]))
