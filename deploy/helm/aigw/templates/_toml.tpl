{{/*
The aigw.toml files (gateway, worker, audio worker), written from values. A small TOML writer: scalars and lists as
JSON (a JSON string, number, bool or array of them is also valid TOML), maps as tables.
`aigw config check` runs on the result in scripts/check-deploy.
*/}}

{{/* A key, quoted unless bare. */}}
{{- define "aigw.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{/* A map's keys, one per line: name, kind, provider, model first (when present), then sorted. */}}
{{- define "aigw.toml.keys" -}}
{{- $first := list -}}
{{- range list "name" "kind" "provider" "model" -}}
{{- if hasKey $ . -}}{{- $first = append $first . -}}{{- end -}}
{{- end -}}
{{- concat $first (omit . "name" "kind" "provider" "model" | keys | sortAlpha) | join "\n" -}}
{{- end -}}

{{/* A value: map → inline table, list → array, anything else → its JSON form. */}}
{{- define "aigw.toml.value" -}}
{{- if and (kindIs "map" .) (not .) -}}
{}
{{- else if kindIs "map" . -}}
{ {{- range $i, $k := include "aigw.toml.keys" . | splitList "\n" }}{{ if $i }},{{ end }} {{ include "aigw.toml.key" $k }} = {{ include "aigw.toml.value" (get $ $k) }}{{ end }} }
{{- else if kindIs "slice" . -}}
[{{- range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "aigw.toml.value" $v }}{{ end }}]
{{- else -}}
{{- toJson . -}}
{{- end -}}
{{- end -}}

{{/*
The body of a table: `key = value` lines for scalars and lists, then one [path.key] sub-table
per map. Call with (list "path." map); nulls are left out.
*/}}
{{- define "aigw.toml.table" -}}
{{- $path := index . 0 -}}
{{- $t := index . 1 -}}
{{- range $k := include "aigw.toml.keys" $t | splitList "\n" | compact }}
{{- $v := index $t $k }}
{{- if not (or (kindIs "map" $v) (kindIs "invalid" $v)) }}
{{ include "aigw.toml.key" $k }} = {{ include "aigw.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k := keys $t | sortAlpha }}
{{- $v := index $t $k }}
{{- if kindIs "map" $v }}
{{- $sub := printf "%s%s" $path (include "aigw.toml.key" $k) }}

[{{ $sub }}]
{{- include "aigw.toml.table" (list (printf "%s." $sub) $v) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The gateway's aigw.toml. */}}
{{- define "aigw.gateway.toml" -}}
{{- $ := . -}}
{{- $cfg := .Values.gateway.config -}}
{{- if .Values.voiceBridge.enabled }}{{ $cfg = include "aigw.gateway.configValues" . | fromJson }}{{ end -}}
# aigw gateway, rendered by the aigw Helm chart ({{ .Chart.Version }}). Secrets: *_env keys name
# env vars filled from the Secret {{ .Values.secrets.name }}.

[server]
{{- include "aigw.toml.table" (list "server." (merge (dict "listen" (printf "0.0.0.0:%v" .Values.gateway.port)) (default dict $cfg.server))) }}
{{- if not .Values.gateway.apiKeys }}
{{- fail "gateway.apiKeys: at least one API key is required (the gateway listens on the pod address)" }}
{{- end }}
{{- range .Values.gateway.apiKeys }}

[[auth.keys]]
{{- include "aigw.toml.table" (list "auth.keys." (omit . "audioModels")) }}
{{- end }}
{{- include "aigw.stateToml" . }}
{{- range $k := omit $cfg "server" | keys | sortAlpha }}
{{- $v := get $cfg $k }}
{{- if kindIs "map" $v }}

[{{ include "aigw.toml.key" $k }}]
{{- include "aigw.toml.table" (list (printf "%s." $k) $v) }}
{{- end }}
{{- end }}
{{- if .Values.worker.enabled }}

# The worker on the AI node: the same binary with only [local] models.
[providers.worker]
kind = "openai"
base_url = {{ printf "http://%s-worker.%s.svc:%v/v1" (include "aigw.fullname" .) .Release.Namespace .Values.worker.port | toJson }}
{{- if .Values.worker.auth.enabled }}
api_key_env = {{ .Values.worker.auth.key_env | toJson }}
{{- end }}
{{- end }}
{{- range $name, $p := .Values.fallback }}
{{- if $p.enabled }}

[providers.{{ $name }}]
kind = {{ ternary "openai" $name (eq $name "openai") | toJson }}
{{- include "aigw.toml.table" (list (printf "providers.%s." $name) (omit $p "enabled")) }}
{{- end }}
{{- end }}
{{- range .Values.gateway.models }}
{{- $alias := . }}
{{- $_ := required "gateway.models: every alias needs a name" .name }}
{{- $first := list }}
{{- if and .worker $.Values.worker.enabled }}
{{- $first = list (dict "provider" "worker" "model" .worker) }}
{{- end }}
{{- $fallback := list }}
{{- range .fallback }}
{{- if not (hasKey $.Values.fallback .provider) }}
{{- fail (printf "gateway.models %s: fallback provider %q is not one of %s" $alias.name .provider (keys $.Values.fallback | sortAlpha | join ", ")) }}
{{- end }}
{{- if (get $.Values.fallback .provider).enabled }}
{{- $fallback = append $fallback . }}
{{- end }}
{{- end }}
{{- if not (or $first $fallback) }}
{{- fail (printf "gateway.models %s: no deployment (the worker is disabled or not named, and no enabled fallback provider)" .name) }}
{{- end }}

[[models]]
name = {{ .name | toJson }}
{{- with .extra }}
{{- include "aigw.toml.table" (list "models." .) }}
{{- end }}
{{- range list $first $fallback }}
{{- if . }}
[[models.groups]]
deployments = [
{{- range . }}
  {{ include "aigw.toml.value" . }},
{{- end }}
]
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.gateway.extraConfig }}

# gateway.extraConfig
{{ . }}
{{- end }}
{{- end -}}

{{/* [state] when Redis is used (gateways and the audio worker share it). */}}
{{- define "aigw.stateToml" -}}
{{- if include "aigw.redisUsed" . }}

[state]
redis_url_env = {{ ternary .Values.externalRedis.urlKey "AIGW_REDIS_URL" (and (not .Values.redis.enabled) .Values.externalRedis.enabled) | toJson }}
{{- include "aigw.toml.table" (list "state." (omit (default dict .Values.state) "redis_url_env")) }}
{{- end }}
{{- end -}}

{{/* The worker's aigw.toml. */}}
{{- define "aigw.worker.toml" -}}
# aigw worker, rendered by the aigw Helm chart ({{ .Chart.Version }}): local models only,
# reached by the gateways as the provider "worker".

[server]
listen = {{ printf "0.0.0.0:%v" .Values.worker.port | toJson }}
{{- if .Values.worker.auth.enabled }}

[[auth.keys]]
name = "gateway"
key_env = {{ .Values.worker.auth.key_env | toJson }}
{{- end }}
{{ include "aigw.localWorker.localToml" (dict "role" "worker" "key" "worker" "w" .Values.worker) }}
{{- with .Values.worker.extraConfig }}

# worker.extraConfig
{{ . }}
{{- end }}
{{- end -}}

{{/*
The audio worker's aigw.toml. Clients reach it directly through the Ingress (/v1/realtime,
/v1/audio/...), so it authenticates them with the gateway's API keys and keeps rate limits
and budgets in the gateway's [state] with the gateway's [budgets]: one ledger for tokens,
dollars and audio seconds.
*/}}
{{- define "aigw.audioWorker.toml" -}}
{{- $a := .Values.audioWorker -}}
{{- $cfg := default dict $a.config -}}
# aigw audio worker, rendered by the aigw Helm chart ({{ .Chart.Version }}): local whisper and
# diarisation models, the realtime WebSocket; the gateway's API keys, [state] and [budgets].

[server]
{{- include "aigw.toml.table" (list "server." (merge (dict "listen" (printf "0.0.0.0:%v" $a.port)) (default dict $cfg.server))) }}
{{- if not .Values.gateway.apiKeys }}
{{- fail "gateway.apiKeys: at least one API key is required (the audio worker shares them)" }}
{{- end }}
{{- $served := list }}
{{- range $a.models }}{{ $served = append $served .name }}{{ end }}
{{- range .Values.gateway.apiKeys }}
{{- /* A key's models here: its audioModels, else its models served here ("*" kept); a key
       left with none cannot use audio and is left out. */}}
{{- $key := omit . "audioModels" "models" }}
{{- $models := list }}
{{- if hasKey . "audioModels" }}
{{- $models = .audioModels }}
{{- else if hasKey . "models" }}
{{- range .models }}{{ if or (eq . "*") (has . $served) }}{{ $models = append $models . }}{{ end }}{{ end }}
{{- else }}
{{- $models = list "*" }}
{{- end }}
{{- if $models }}

[[auth.keys]]
{{- include "aigw.toml.table" (list "auth.keys." (set $key "models" $models)) }}
{{- end }}
{{- end }}
{{- include "aigw.stateToml" . }}
{{- with .Values.gateway.config.budgets }}
{{- /* The same policies; a downgrade to a model this worker does not serve (a chat alias)
       is the gateway's business and left out here. */}}
{{- $budgets := deepCopy . }}
{{- range $name, $p := (default dict $budgets.policies) }}
{{- if and (kindIs "map" $p) $p.downgrade_to (not (has $p.downgrade_to $served)) }}
{{- $_ := set $budgets.policies $name (omit $p "downgrade_to" "downgrade_at") }}
{{- end }}
{{- end }}

[budgets]
{{- include "aigw.toml.table" (list "budgets." $budgets) }}
{{- end }}
{{- range $k := omit $cfg "server" | keys | sortAlpha }}
{{- $v := get $cfg $k }}
{{- if kindIs "map" $v }}

[{{ include "aigw.toml.key" $k }}]
{{- include "aigw.toml.table" (list (printf "%s." $k) $v) }}
{{- end }}
{{- end }}
{{ include "aigw.localWorker.localToml" (dict "role" "audio worker" "key" "audioWorker" "w" $a) }}
{{- with $a.extraConfig }}

# audioWorker.extraConfig
{{ . }}
{{- end }}
{{- end -}}
