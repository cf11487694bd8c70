"""slmpack: pack several vLLM replicas of a small language model onto one GPU."""

__version__ = "0.1.0"
