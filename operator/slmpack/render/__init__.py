"""Pure builders of the Kubernetes objects an SLMDeployment owns: same input, same manifest."""
