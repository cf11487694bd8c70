"""The SLMDeployment controller: pure decisions (inventory, decide, status) and the thin
imperative shell that reads the cluster, applies objects and writes status."""
