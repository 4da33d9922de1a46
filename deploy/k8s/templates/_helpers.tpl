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
{{- if .tls }}
prometheus.io/scheme: https
{{- end }}
{{- end }}
{{- end -}}

{{/* The shared route store (etcd) is on: gateway.routeStore.type etcd, its members external or bundled. */}}
{{- define "model-gateway.etcdStore" -}}
{{- if eq .Values.gateway.routeStore.type "etcd" }}true{{ end -}}
{{- end -}}

{{/* Refuses what cannot work as one gateway: several replicas on the file store (each its own routes), an etcd store
with no members, a bundled etcd nobody uses or one given TLS/auth settings it does not have. */}}
{{- define "model-gateway.checkRouteStore" -}}
{{- $g := .Values.gateway -}}
{{- $s := $g.routeStore -}}
{{- if eq $s.type "file" -}}
{{- if and (or $g.autoscaling.enabled (gt (int $g.replicas) 1)) (not $s.acceptSingleWriter) -}}
{{- fail (printf "gateway.replicas is %d%s with the file route store: each replica would keep its own routes, and an admin change, instant switch or rollout would reach only the pod that took the call. Share the routes through etcd: gateway.routeStore.type=etcd with gateway.routeStore.etcd.endpoints (an operated etcd) or etcd.enabled=true (the bundled one; see values-ha.yaml). To run several replicas on their own copies knowingly, set gateway.routeStore.acceptSingleWriter=true." (int $g.replicas) (ternary " and gateway.autoscaling is on" "" $g.autoscaling.enabled)) -}}
{{- end -}}
{{- if .Values.etcd.enabled -}}
{{- fail "etcd.enabled deploys an etcd for the route store, which the file store does not use: set gateway.routeStore.type=etcd" -}}
{{- end -}}
{{- else -}}
{{- if and .Values.etcd.enabled $s.etcd.endpoints -}}
{{- fail "gateway.routeStore.etcd.endpoints and etcd.enabled are both set: point the gateway at an external etcd or at the bundled one, not both" -}}
{{- end -}}
{{- if not (or .Values.etcd.enabled $s.etcd.endpoints) -}}
{{- fail "gateway.routeStore.type=etcd needs gateway.routeStore.etcd.endpoints (host:port of each member of an external etcd) or etcd.enabled=true (the bundled one)" -}}
{{- end -}}
{{- if and .Values.etcd.enabled (or $s.etcd.tls.enabled $s.etcd.auth.user) -}}
{{- fail "the bundled etcd (etcd.enabled) has no TLS and no users: gateway.routeStore.etcd.tls and .auth are for an external etcd" -}}
{{- end -}}
{{- if and $s.etcd.tls.clientCertificate (not $s.etcd.tls.secretName) -}}
{{- fail "gateway.routeStore.etcd.tls.clientCertificate needs tls.secretName (a Secret with tls.crt and tls.key)" -}}
{{- end -}}
{{- if and $s.etcd.auth.user (not $s.etcd.auth.passwordSecret) -}}
{{- fail "gateway.routeStore.etcd.auth.user needs auth.passwordSecret (the password is read from a file, never an env value)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The bundled etcd's members, by their stable names under its headless Service. */}}
{{- define "model-gateway.etcdMembers" -}}
{{- $name := include "model-gateway.component" (dict "root" . "component" "etcd") -}}
{{- $members := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $members = append $members (printf "%s-%d.%s.%s.svc" $name $i $name $.Release.Namespace) -}}
{{- end -}}
{{- join "," $members -}}
{{- end -}}

{{/* GATEWAY_ROUTES_STORE: etcd[s]://member,member.../prefix (settings.py's EtcdSettings.parse). */}}
{{- define "model-gateway.routeStoreURL" -}}
{{- $e := .Values.gateway.routeStore.etcd -}}
{{- $endpoints := $e.endpoints -}}
{{- if not $endpoints -}}
{{- range (include "model-gateway.etcdMembers" . | splitList ",") -}}
{{- $endpoints = append $endpoints (printf "%s:2379" .) -}}
{{- end -}}
{{- end -}}
{{- printf "%s://%s/%s" (ternary "etcds" "etcd" $e.tls.enabled) (join "," $endpoints) (trimAll "/" $e.prefix) -}}
{{- end -}}

{{/* Refuses client authentication or TLS that cannot work: no policy (or two), no keys, health closed to the probes,
no key for the helm test or for a Prometheus that must authenticate, TLS without its Secret, admin TLS with the etcd
store. Every problem at once. */}}
{{- define "model-gateway.checkSecurity" -}}
{{- $g := .Values.gateway -}}
{{- $a := $g.auth -}}
{{- $problems := list -}}
{{- if $a.enabled -}}
{{- $sources := compact (list (ternary "policy" "" (not (empty $a.policy))) $a.policyConfigMap $a.policySecret) -}}
{{- if ne (len $sources) 1 -}}
{{- $problems = append $problems (printf "gateway.auth.enabled needs exactly one policy source: gateway.auth.policy (the document), .policyConfigMap or .policySecret (%s given)" (ternary "none" (join ", " $sources) (empty $sources))) -}}
{{- end -}}
{{- $jwt := and $a.policy (kindIs "map" $a.policy) (hasKey $a.policy "jwt") -}}
{{- if not (or $a.keysSecret $jwt) -}}
{{- $problems = append $problems "gateway.auth.enabled needs gateway.auth.keysSecret: a Secret holding the hashed API keys (`gateway auth add-key keys.yaml TENANT`, then `kubectl create secret generic NAME --from-file=keys.yaml`); only an inline policy with a jwt section may go without" -}}
{{- end -}}
{{- if and $jwt (kindIs "map" $a.policy.jwt) $a.policy.jwt.jwks_file -}}
{{- if not (and $a.jwksConfigMap (hasPrefix "/etc/gateway/jwks/" (toString $a.policy.jwt.jwks_file))) -}}
{{- $problems = append $problems "gateway.auth.policy.jwt.jwks_file must be /etc/gateway/jwks/KEY with gateway.auth.jwksConfigMap holding KEY (or use jwt.jwks_url)" -}}
{{- end -}}
{{- end -}}
{{- if not (has "health" $a.open) -}}
{{- $problems = append $problems "gateway.auth.open must keep health: the kubelet's probes carry no credentials" -}}
{{- end -}}
{{- if and .Values.helmTest.enabled (not .Values.helmTest.apiKeySecret) -}}
{{- $problems = append $problems "helm test needs an API key with gateway.auth on: helmTest.apiKeySecret (a Secret holding a plain key of a tenant granted helmTest's models), or helmTest.enabled=false" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not (has "metrics" $a.open)) (not .Values.metrics.serviceMonitor.apiKeySecret) -}}
{{- $problems = append $problems "metrics is not in gateway.auth.open: the ServiceMonitor needs metrics.serviceMonitor.apiKeySecret (an API key of a tenant with metrics: true)" -}}
{{- end -}}
{{- end -}}
{{- if and $g.tls.enabled (not $g.tls.secretName) -}}
{{- $problems = append $problems "gateway.tls.enabled needs gateway.tls.secretName: a kubernetes.io/tls Secret (tls.crt, tls.key), e.g. cert-manager's" -}}
{{- end -}}
{{- if and $g.admin.enabled $g.admin.tls.enabled -}}
{{- if not (or $g.admin.tls.secretName $g.tls.secretName) -}}
{{- $problems = append $problems "gateway.admin.tls.enabled needs gateway.admin.tls.secretName (or gateway.tls.secretName)" -}}
{{- end -}}
{{- if include "model-gateway.etcdStore" . -}}
{{- $problems = append $problems "gateway.admin.tls with the etcd route store: the replicas forward rollout writes to the leader at https://<pod IP>, which no certificate names; keep the admin API on plain HTTP inside its NetworkPolicy" -}}
{{- end -}}
{{- end -}}
{{- with $problems -}}
{{- fail (join "\n" .) -}}
{{- end -}}
{{- end -}}

{{/* The Secret and key of the CA that signed the gateway's certificate (the chart's own clients trust it). */}}
{{- define "model-gateway.tlsCA" -}}
secretName: {{ default .Values.gateway.tls.secretName .Values.gateway.tls.ca.secretName }}
key: {{ .Values.gateway.tls.ca.key }}
{{- end -}}

{{/* The name in-cluster clients reach the gateway by, which its certificate must carry. */}}
{{- define "model-gateway.serviceHost" -}}
{{- printf "%s.%s.svc" (include "model-gateway.component" (dict "root" . "component" "gateway")) .Release.Namespace -}}
{{- end -}}
