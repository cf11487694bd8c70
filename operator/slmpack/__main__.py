"""`python -m slmpack` runs the CLI (as the operator image and the tests do)."""

from slmpack.cli.main import app

app()
