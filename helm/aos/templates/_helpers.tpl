{{/*
Expand the name of the chart.
*/}}
{{- define "aos.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
A fully qualified app name, truncated at 63 characters (some Kubernetes name
fields are limited to that, by the DNS naming spec). The headless Service adds
"-headless", so the name itself keeps to 54.
*/}}
{{- define "aos.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Allow the release namespace to be overridden (for `helm template` into a
kustomization, as the prometheus-community charts do).
*/}}
{{- define "aos.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Chart name and version as used by the chart label.
*/}}
{{- define "aos.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "aos.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aos.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "aos.labels" -}}
helm.sh/chart: {{ include "aos.chart" . }}
{{ include "aos.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "aos.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The name of the service account to use
*/}}
{{- define "aos.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aos.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The headless Service that cluster membership discovers peers through
(AOS_PEERS_DNS, docs/scaling.md).
*/}}
{{- define "aos.headlessName" -}}
{{- printf "%s-headless" (include "aos.fullname" .) }}
{{- end }}

{{- define "aos.peersDNS" -}}
{{- printf "%s.%s.svc.%s:%d" (include "aos.headlessName" .) (include "aos.namespace" .) .Values.clusterDomain (int .Values.service.targetPort) }}
{{- end }}

{{/*
The Secret holding the store URL, the admin token and the cluster secret.
*/}}
{{- define "aos.secretName" -}}
{{- default (include "aos.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{/*
The image reference: registry/repository:tag, or @digest when one is given.
*/}}
{{- define "aos.image" -}}
{{- $repository := .Values.image.repository }}
{{- if .Values.image.registry }}
{{- $repository = printf "%s/%s" .Values.image.registry .Values.image.repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The store URL the chart writes into its Secret: the configured one, else the
SQLite file on the data volume.
*/}}
{{- define "aos.storageUrl" -}}
{{- if .Values.store.url }}
{{- .Values.store.url }}
{{- else if eq .Values.store.kind "sqlite" }}
{{- printf "sqlite:///%s/aos.db" .Values.persistence.mountPath }}
{{- else }}
{{- fail (printf "store.url (or auth.existingSecret) is required for store.kind=%s" .Values.store.kind) }}
{{- end }}
{{- end }}

{{/*
A secret value that stays the same across upgrades: the configured one, else
the one already in the release's Secret, else a new random one.
*/}}
{{- define "aos.stableSecret" -}}
{{- $ctx := index . 0 }}
{{- $key := index . 1 }}
{{- $value := index . 2 }}
{{- if $value }}
{{- $value }}
{{- else }}
{{- $existing := lookup "v1" "Secret" (include "aos.namespace" $ctx) (include "aos.fullname" $ctx) }}
{{- if and $existing (index $existing.data $key) }}
{{- index $existing.data $key | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Checks that stop a release that cannot work.
*/}}
{{- define "aos.validate" -}}
{{- if eq .Values.store.kind "sqlite" }}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}
{{- fail "store.kind=sqlite serves one node only: set replicaCount=1 and autoscaling.enabled=false, or use a server store (docs/storage.md)" }}
{{- end }}
{{- end }}
{{- end }}
