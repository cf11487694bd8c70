"""The SLMDeployment API as typed models; crds/ is the schema's single source."""
