{{/*
Chart name, cut to 63 characters (the DNS label limit most object names follow).
*/}}
{{- define "slmpack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
"<release>-<chart>", or the release name alone when it already contains the chart name.
*/}}
{{- define "slmpack.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The full name plus a suffix, still within 63 characters: the full name is cut, not the suffix.
Usage: include "slmpack.suffixedName" (list . "metrics")
*/}}
{{- define "slmpack.suffixedName" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- $base := include "slmpack.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{/*
Name of cluster-scoped objects (ClusterRole, ClusterRoleBinding). It carries the release
namespace, so releases of the same name in two namespaces do not collide.
*/}}
{{- define "slmpack.clusterName" -}}
{{- include "slmpack.suffixedName" (list . .Release.Namespace) }}
{{- end }}

{{- define "slmpack.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels. Usage: include "slmpack.labels" (list . "operator"), the second item being
app.kubernetes.io/component.
*/}}
{{- define "slmpack.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "slmpack.chart" $root }}
app.kubernetes.io/name: {{ include "slmpack.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ index . 1 }}
app.kubernetes.io/part-of: slmpack
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector of the operator pods: a small set that never changes across upgrades (a Deployment's
selector is immutable).
*/}}
{{- define "slmpack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slmpack.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "slmpack.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "slmpack.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "slmpack.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "slmpack.launcherImage" -}}
{{- with .Values.operator.launcherImage }}
{{- printf "%s:%s" .repository (default $.Chart.AppVersion .tag) }}
{{- end }}
{{- end }}

{{/*
Name of the metrics/health Service.
*/}}
{{- define "slmpack.metricsServiceName" -}}
{{- include "slmpack.suffixedName" (list . "metrics") }}
{{- end }}

{{/*
Cross-value checks the JSON schema cannot express with a readable message.
*/}}
{{- define "slmpack.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.peering.enabled) }}
{{- fail "replicaCount > 1 needs peering.enabled=true: without peering every replica reconciles every SLMDeployment at once" }}
{{- end }}
{{- if eq (int .Values.metricsPort) (int .Values.healthPort) }}
{{- fail "metricsPort and healthPort must differ: /metrics and /healthz are served by two listeners" }}
{{- end }}
{{- if lt (float64 .Values.operator.backoffMaxSeconds) (float64 .Values.operator.backoffBaseSeconds) }}
{{- fail "operator.backoffMaxSeconds must be at least operator.backoffBaseSeconds" }}
{{- end }}
{{- end }}
