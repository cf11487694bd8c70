"""The `slmpack` command line."""
