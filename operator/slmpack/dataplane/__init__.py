"""Running real inference engines outside Kubernetes: the vLLM CPU build for tests."""
