{{/* Names, labels, images and the env entries that carry secrets. */}}

{{- define "aigw.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aigw.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Common labels; call with (list $ "component"). */}}
{{- define "aigw.labels" -}}
{{- $ := index . 0 -}}
helm.sh/chart: {{ printf "%s-%s" $.Chart.Name $.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ $.Release.Service }}
app.kubernetes.io/version: {{ $.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: aigw
{{ include "aigw.selectorLabels" . }}
{{- end -}}

{{/* Selector labels; call with (list $ "component"). */}}
{{- define "aigw.selectorLabels" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "aigw.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "aigw.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "aigw.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "aigw.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "aigw.fetchImage" -}}
{{- printf "%s:%s" .Values.image.fetchRepository (default (printf "%s-fetch" .Chart.AppVersion) .Values.image.fetchTag) -}}
{{- end -}}

{{/* Whether the gateways share state in Redis ("true" or ""). */}}
{{- define "aigw.redisUsed" -}}
{{- if or .Values.redis.enabled .Values.externalRedis.enabled -}}true{{- end -}}
{{- end -}}

{{/* Secret keys the gateway reads, one per line (each is also the env var name). */}}
{{- define "aigw.gateway.secretKeys" -}}
{{- $keys := list -}}
{{- range .Values.gateway.apiKeys -}}
{{- if .key_env -}}{{- $keys = append $keys .key_env -}}{{- end -}}
{{- end -}}
{{- with .Values.gateway.config.admin -}}
{{- if .key_env -}}{{- $keys = append $keys .key_env -}}{{- end -}}
{{- end -}}
{{- if and .Values.worker.enabled .Values.worker.auth.enabled -}}
{{- $keys = append $keys .Values.worker.auth.key_env -}}
{{- end -}}
{{- range $name, $p := .Values.fallback -}}
{{- if and $p.enabled $p.api_key_env -}}{{- $keys = append $keys $p.api_key_env -}}{{- end -}}
{{- end -}}
{{- $keys = concat $keys (include "aigw.redis.secretKeys" . | splitList "\n" | compact) -}}
{{- join "\n" (uniq $keys) -}}
{{- end -}}

{{/* Secret keys a Redis client reads (the password or the external URL). */}}
{{- define "aigw.redis.secretKeys" -}}
{{- if .Values.redis.enabled -}}
{{- if .Values.redis.auth.enabled -}}{{ .Values.redis.auth.passwordKey }}{{- end -}}
{{- else if .Values.externalRedis.enabled -}}
{{ .Values.externalRedis.urlKey }}
{{- end -}}
{{- end -}}

{{/* Secret keys the audio worker reads: the clients' API keys and Redis's. */}}
{{- define "aigw.audioWorker.secretKeys" -}}
{{- $keys := list -}}
{{- range .Values.gateway.apiKeys -}}
{{- if .key_env -}}{{- $keys = append $keys .key_env -}}{{- end -}}
{{- end -}}
{{- $keys = concat $keys (include "aigw.redis.secretKeys" . | splitList "\n" | compact) -}}
{{- join "\n" (uniq $keys) -}}
{{- end -}}

{{/* Secret keys the worker reads. */}}
{{- define "aigw.worker.secretKeys" -}}
{{- if .Values.worker.auth.enabled -}}{{ .Values.worker.auth.key_env }}{{- end -}}
{{- end -}}

{{/* env entries reading each key of a list from the chart's Secret; call with (list $ keys). */}}
{{- define "aigw.secretEnv" -}}
{{- $ := index . 0 -}}
{{- range index . 1 }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.secrets.name }}
      key: {{ . }}
{{- end }}
{{- end -}}

{{/* The in-cluster Redis URL, built from the password env var by Kubernetes' $(VAR) expansion. */}}
{{- define "aigw.redisUrl" -}}
{{- $host := printf "%s-redis.%s.svc" (include "aigw.fullname" .) .Release.Namespace -}}
{{- if .Values.redis.auth.enabled -}}
{{- printf "redis://:$(%s)@%s:6379/0" .Values.redis.auth.passwordKey $host -}}
{{- else -}}
{{- printf "redis://%s:6379/0" $host -}}
{{- end -}}
{{- end -}}

{{/* Pod-level security context, image pull secrets and service account of aigw pods. */}}
{{- define "aigw.podCommon" -}}
serviceAccountName: {{ include "aigw.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* HTTP probes of an aigw container (its port is named http); call with the probes map. */}}
{{- define "aigw.probes" -}}
{{- $p := . -}}
startupProbe:
  httpGet: {path: /health, port: http}
  {{- toYaml $p.startup | nindent 2 }}
livenessProbe:
  httpGet: {path: /health, port: http}
  {{- toYaml $p.liveness | nindent 2 }}
readinessProbe:
  httpGet: {path: /ready, port: http}
  {{- toYaml $p.readiness | nindent 2 }}
{{- end -}}
