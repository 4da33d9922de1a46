{{/* Names, labels and shared pieces of the model-gateway chart. Every define is namespaced "model-gateway.". */}}

{{- define "model-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "model-gateway.fullname" -}}
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

{{/* A component's object name: model-gateway.component (dict "root" $ "component" "tfserving"). */}}
{{- define "model-gateway.component" -}}
{{- printf "%s-%s" (include "model-gateway.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "model-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "model-gateway.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "model-gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "model-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: model-gateway
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* metadata: name, namespace, labels of a component's object. */}}
{{- define "model-gateway.metadata" -}}
name: {{ include "model-gateway.component" . }}
namespace: {{ .root.Release.Namespace }}
labels:
  {{- include "model-gateway.labels" . | nindent 2 }}
{{- end -}}

{{- define "model-gateway.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* The routes document the gateway serves: .Values.gateway.routes, else the file the chart ships. */}}
{{- define "model-gateway.routes" -}}
{{- if .Values.gateway.routes -}}
{{- toYaml .Values.gateway.routes -}}
{{- else -}}
{{- .Files.Get "files/routes.yaml" -}}
{{- end -}}
{{- end -}}

{{/* Seconds a gateway pod may take to stop: its drain, then the longest backend call it may still be serving. */}}
{{- define "model-gateway.gracePeriod" -}}
{{- $routes := include "model-gateway.routes" . | fromYaml -}}
{{- $longest := 0.0 -}}
{{- range $_, $backend := $routes.backends -}}
{{- $timeout := float64 (default 30 $backend.timeout_s) -}}
{{- if gt $timeout $longest }}{{ $longest = $timeout }}{{ end -}}
{{- end -}}
{{- $needed := addf .Values.gateway.drainSeconds $longest | ceil | int -}}
{{- with .Values.gateway.terminationGracePeriodSeconds -}}
{{- if le (int .) $needed -}}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) must exceed drainSeconds + the longest backend timeout_s (%d)" (int .) $needed) -}}
{{- end -}}
{{- . -}}
{{- else -}}
{{- add $needed 5 -}}
{{- end -}}
{{- end -}}

{{/* The hardened securityContext every container gets (numeric non-root user, read-only root, no capabilities). */}}
{{- define "model-gateway.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "model-gateway.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Scheduling of a model server: GPU nodes through nodeSelector, tolerations and an optional runtime class. */}}
{{- define "model-gateway.modelServerScheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* A model server's resources, with its GPUs as nvidia.com/gpu limits (requests follow for extended resources). */}}
{{- define "model-gateway.modelServerResources" -}}
requests:
  {{- toYaml .resources.requests | nindent 2 }}
limits:
  {{- toYaml .resources.limits | nindent 2 }}
  {{- if gt (int .gpu) 0 }}
  nvidia.com/gpu: {{ .gpu }}
  {{- end }}
{{- end -}}

{{/* initContainer + volume giving a model server its models under /models: copied from the models image, or a PVC. */}}
{{- define "model-gateway.modelVolume" -}}
- name: models
  {{- if eq .root.Values.modelStorage.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ required "modelStorage.pvc.claimName is required when modelStorage.source is pvc" .root.Values.modelStorage.pvc.claimName }}
    readOnly: true
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- end -}}

{{- define "model-gateway.modelInitContainers" -}}
{{- if eq .root.Values.modelStorage.source "image" }}
initContainers:
  - name: models
    image: {{ include "model-gateway.image" (dict "root" .root "image" .root.Values.modelStorage.image) }}
    imagePullPolicy: {{ .root.Values.modelStorage.image.pullPolicy }}
    command: ["sh", "-c", "cp -R /models/{{ .component }}/. /target/"]
    securityContext:
      {{- include "model-gateway.containerSecurityContext" . | nindent 6 }}
    resources:
      requests: {cpu: 100m, memory: 64Mi}
      limits: {cpu: 500m, memory: 256Mi}
    volumeMounts:
      - {name: models, mountPath: /target}
{{- end }}
{{- end -}}

{{/* Where a model server reads its models: TF Serving's base paths are /models/NAME (model_repo's models.config),
TorchServe's model_store is /srv/model-store (config.properties). */}}
{{- define "model-gateway.modelMount" -}}
- name: models
  mountPath: {{ .mountPath }}
  readOnly: true
  {{- if eq .root.Values.modelStorage.source "pvc" }}
  subPath: {{ .component }}
  {{- end }}
{{- end -}}

{{/* Pod-level prometheus.io annotations for a component's metrics endpoint. */}}
{{- define "model-gateway.scrapeAnnotations" -}}
{{- if .root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: {{ .path }}
{{- end }}
{{- end -}}
