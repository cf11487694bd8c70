{{/*
What the operator does, and nothing more (docs/install.md lists it with the reasons):
  - reads SLMDeployments and writes only their status (server-side apply), never their spec;
  - server-side applies the Deployment, Service and PodDisruptionBudget of each one; it deletes
    nothing: those carry owner references and the garbage collector removes them;
  - reads pods (scheduling and crash faults), ConfigMaps (a model's config.json), nodes (GPUs);
  - creates events.k8s.io Events on its SLMDeployments.
*/}}
{{- define "slmpack.namespacedRules" -}}
- apiGroups: [slmpack.dev]
  resources: [slmdeployments]
  verbs: [get, list, watch]
- apiGroups: [slmpack.dev]
  resources: [slmdeployments/status]
  verbs: [patch]
# Owner references with blockOwnerDeletion need this where the
# OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, for one).
- apiGroups: [slmpack.dev]
  resources: [slmdeployments/finalizers]
  verbs: [update]
# Server-side apply needs patch, and create for an object that does not exist yet.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end }}
{{- define "slmpack.clusterScopedRules" -}}
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch]
{{- if .Values.rbac.kopfScanning }}
# kopf re-reads the API's resources when a CRD appears or changes.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if .Values.watchNamespaces }}
# kopf checks which of watchNamespaces exist and notices ones created later.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end }}
{{- end }}
{{- define "slmpack.peeringRules" -}}
{{- $root := index . 0 }}
{{- $resource := index . 1 }}
{{- if $root.Values.peering.enabled }}
# kopf peering: every replica watches the peering objects and writes its heartbeat into its own.
- apiGroups: [kopf.dev]
  resources: [{{ $resource }}]
  verbs: [list, watch]
- apiGroups: [kopf.dev]
  resources: [{{ $resource }}]
  resourceNames: [{{ $root.Values.peering.name | quote }}]
  verbs: [get, patch]
{{- end }}
{{- end }}
