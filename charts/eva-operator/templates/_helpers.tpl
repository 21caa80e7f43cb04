{{/* Names, labels and the settings several templates share. */}}

{{- define "eva-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eva-operator.fullname" -}}
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

{{- define "eva-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eva-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eva-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "eva-operator.labels" -}}
helm.sh/chart: {{ include "eva-operator.chart" . }}
{{ include "eva-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: eva
{{- end }}

{{- define "eva-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "eva-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "eva-operator.image" -}}
{{- $img := .Values.operator.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{- define "eva-operator.stepImage" -}}
{{- printf "%s:%s" .Values.steps.image.repository (default .Chart.AppVersion .Values.steps.image.tag) }}
{{- end }}

{{/* The webhook Service (port 443 -> the operator's webhook port). */}}
{{- define "eva-operator.webhookServiceName" -}}
{{- printf "%s-webhook" (include "eva-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of cluster-scoped objects (the webhook ClusterRole and configuration): with
`scope: namespace` several installs may share a cluster, so the namespace is part of it.
*/}}
{{- define "eva-operator.clusterName" -}}
{{- if eq .Values.scope "namespace" }}
{{- printf "%s-%s" (include "eva-operator.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- include "eva-operator.fullname" . }}
{{- end }}
{{- end }}

{{- define "eva-operator.webhookConfigurationName" -}}
{{- default (printf "%s.eva.dev" (include "eva-operator.clusterName" .)) .Values.webhook.configurationName }}
{{- end }}

{{- define "eva-operator.webhookMode" -}}
{{- if .Values.webhook.enabled }}{{ .Values.webhook.mode }}{{ else }}off{{ end }}
{{- end }}

{{- define "eva-operator.certificateName" -}}
{{- printf "%s-webhook" (include "eva-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eva-operator.certificateSecretName" -}}
{{- printf "%s-webhook-tls" (include "eva-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eva-operator.stepServiceAccountName" -}}
{{- .Values.steps.serviceAccount.name }}
{{- end }}

{{- define "eva-operator.artifactClaimName" -}}
{{- if .Values.artifacts.pvc.create }}
{{- default (printf "%s-artifacts" (include "eva-operator.fullname" .)) .Values.artifacts.pvc.name }}
{{- else }}
{{- .Values.artifacts.claimName }}
{{- end }}
{{- end }}

{{/* The namespaces the operator watches: empty = the whole cluster. */}}
{{- define "eva-operator.watchNamespaces" -}}
{{- if eq .Values.scope "namespace" }}{{ .Release.Namespace }}{{ end }}
{{- end }}

{{- define "eva-operator.modelCacheClaimName" -}}
{{- if .Values.modelCache.pvc.create }}
{{- default (printf "%s-models" (include "eva-operator.fullname" .)) .Values.modelCache.pvc.name }}
{{- else }}
{{- .Values.modelCache.claimName }}
{{- end }}
{{- end }}
