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

{{- define "aigw.voiceBridgeImage" -}}
{{- printf "%s:%s" .Values.image.voiceBridgeRepository (default (printf "%s-voice-bridge" .Chart.AppVersion) .Values.image.voiceBridgeTag) -}}
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
{{- with include "aigw.discordVoice.tokenKey" . -}}{{- $keys = append $keys . -}}{{- end -}}
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

{{/* ---- the Discord voice bridge ----------------------------------------------------------- */}}

{{/*
The [discord.voice] keys the chart sets while voiceBridge.enabled: the bridge's Service and
the shared secret's env var (= its Secret key). They override the same keys of
gateway.config.discord.voice; its other keys (transcript_lines, ...) are kept.
*/}}
{{- define "aigw.voiceBridge.voiceConfig" -}}
{{- $v := .Values.voiceBridge -}}
{{- toJson (dict
      "bridge_url" (printf "http://%s-voice-bridge.%s.svc:%v" (include "aigw.fullname" .) .Release.Namespace $v.port)
      "bridge_token_env" $v.tokenKey) -}}
{{- end -}}

{{/* The gateway's config values with the voice bridge's [discord.voice] merged in. */}}
{{- define "aigw.gateway.configValues" -}}
{{- $cfg := deepCopy .Values.gateway.config -}}
{{- if and .Values.voiceBridge.enabled $cfg.discord -}}
{{- $voice := include "aigw.voiceBridge.voiceConfig" . | fromJson -}}
{{- $_ := set $cfg "discord" (merge (dict "voice" $voice) $cfg.discord) -}}
{{- end -}}
{{- toJson $cfg -}}
{{- end -}}

{{/* The Secret key (= env var) of the secret shared with the bridge, when the gateway's
[discord.voice] is configured (by voiceBridge or by hand); "" otherwise. */}}
{{- define "aigw.discordVoice.tokenKey" -}}
{{- $d := .Values.gateway.config.discord -}}
{{- if $d -}}
{{- if .Values.voiceBridge.enabled -}}
{{ .Values.voiceBridge.tokenKey }}
{{- else if $d.voice -}}
{{ $d.voice.bridge_token_env | default "AIGW_VOICE_BRIDGE_TOKEN" }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Validates voiceBridge against the rest of the values, failing with a message that says what
to change; returns the key_env of the gateway.apiKeys entry the bridge presents on the
realtime connection (voiceBridge.apiKey, else the first entry in [discord]'s tenant).
*/}}
{{- define "aigw.voiceBridge.apiKeyEnv" -}}
{{- $v := .Values.voiceBridge -}}
{{- $d := .Values.gateway.config.discord -}}
{{- if not $d -}}
{{- fail "voiceBridge.enabled needs gateway.config.discord (application_id, public_key, model): the gateway answers /listen and /stop and calls the bridge through [discord.voice]" -}}
{{- end -}}
{{- $tenant := $d.tenant | default "discord" -}}
{{- $key := dict -}}
{{- range .Values.gateway.apiKeys -}}
{{- if and (not $key) (ternary (eq .name $v.apiKey) (eq (.tenant | default "") $tenant) (ne $v.apiKey "")) -}}
{{- $key = . -}}
{{- end -}}
{{- end -}}
{{- if not $key -}}
{{- if $v.apiKey -}}
{{- fail (printf "voiceBridge.apiKey %q: no gateway.apiKeys entry of that name" $v.apiKey) -}}
{{- else -}}
{{- fail (printf "voiceBridge: no gateway.apiKeys entry in the tenant %q of gateway.config.discord, whose budgets pay for the channels' audio; add one (the bridge presents it on the realtime connection) or name one in voiceBridge.apiKey" $tenant) -}}
{{- end -}}
{{- end -}}
{{- if not $key.key_env -}}
{{- fail (printf "voiceBridge: gateway.apiKeys %q has no key_env: the bridge must read the key itself from the Secret" $key.name) -}}
{{- end -}}
{{- if and (not $v.realtimeUrl) (not .Values.audioWorker.enabled) -}}
{{- fail "voiceBridge needs a realtime endpoint: enable audioWorker (the default) or set voiceBridge.realtimeUrl (the gateways serve no /v1/realtime here)" -}}
{{- end -}}
{{- if and (not $v.realtimeUrl) .Values.audioWorker.enabled -}}
{{- /* The audio worker accepts the key only with models there (its audioModels, else its
       models the audio worker serves, "*" kept; see aigw.audioWorker.toml). */ -}}
{{- $served := list -}}
{{- range .Values.audioWorker.models -}}{{- $served = append $served .name -}}{{- end -}}
{{- $models := list "*" -}}
{{- if hasKey $key "audioModels" -}}
{{- $models = $key.audioModels -}}
{{- else if hasKey $key "models" -}}
{{- $models = list -}}
{{- range $key.models -}}{{- if or (eq . "*") (has . $served) -}}{{- $models = append $models . -}}{{- end -}}{{- end -}}
{{- end -}}
{{- if not $models -}}
{{- fail (printf "voiceBridge: gateway.apiKeys %q has no models on the audio worker, which would refuse its realtime connection; give it audioModels (e.g. [whisper-tiny.en])" $key.name) -}}
{{- end -}}
{{- end -}}
{{- $key.key_env -}}
{{- end -}}

{{/* Secret keys the bridge reads: the bot token, the shared secret, its API key. */}}
{{- define "aigw.voiceBridge.secretKeys" -}}
{{- if .Values.voiceBridge.enabled -}}
{{- $d := .Values.gateway.config.discord | default dict -}}
{{- list ($d.bot_token_env | default "DISCORD_BOT_TOKEN") .Values.voiceBridge.tokenKey (include "aigw.voiceBridge.apiKeyEnv" .) | join "\n" -}}
{{- end -}}
{{- end -}}
