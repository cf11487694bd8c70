"""`python -m slmpack.nodeagent`."""

import sys

from slmpack.nodeagent.app import node_agent_main

sys.exit(node_agent_main(sys.argv[1:]))
