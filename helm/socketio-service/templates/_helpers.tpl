{{/* Chart name, truncated to the 63 characters DNS labels allow. */}}
{{- define "socketio-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: "<release>-<chart>", or the release name when it already contains the chart name. */}}
{{- define "socketio-service.fullname" -}}
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

{{- define "socketio-service.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "socketio-service.commonLabels" -}}
helm.sh/chart: {{ include "socketio-service.chart" . }}
app.kubernetes.io/name: {{ include "socketio-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: socketio-service
{{- end -}}

{{/* Selector labels of the service pods: name + instance + component, nothing that changes between releases. */}}
{{- define "socketio-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "socketio-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "socketio-service.labels" -}}
{{ include "socketio-service.commonLabels" . }}
app.kubernetes.io/component: server
{{- end -}}

{{/* Redis objects. */}}
{{- define "socketio-service.redis.fullname" -}}
{{- printf "%s-redis" (include "socketio-service.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "socketio-service.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "socketio-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "socketio-service.redis.labels" -}}
{{ include "socketio-service.commonLabels" . }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "socketio-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "socketio-service.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "socketio-service.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Secret holding JWT_SECRET, and its key. */}}
{{- define "socketio-service.jwt.secretName" -}}
{{- default (printf "%s-jwt" (include "socketio-service.fullname" .)) .Values.jwt.existingSecret -}}
{{- end -}}

{{- define "socketio-service.jwt.secretKey" -}}
{{- if .Values.jwt.existingSecret -}}{{ .Values.jwt.existingSecretKey }}{{- else -}}jwt-secret{{- end -}}
{{- end -}}

{{/* Secret holding the Redis password for our own Redis, and its key. */}}
{{- define "socketio-service.redis.secretName" -}}
{{- default (include "socketio-service.redis.fullname" .) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{- define "socketio-service.redis.passwordKey" -}}
{{- if .Values.redis.auth.existingSecret -}}{{ .Values.redis.auth.existingSecretPasswordKey }}{{- else -}}redis-password{{- end -}}
{{- end -}}

{{/* Grace period: pod must outlive preStop + drain + the service's shutdown delay (<= 5 s) + Redis close. */}}
{{- define "socketio-service.terminationGracePeriodSeconds" -}}
{{- $drain := int (ceil .Values.config.shutdownDrainSeconds) -}}
{{- $preStop := int .Values.preStopSleepSeconds -}}
{{- $floor := add $drain $preStop 5 -}}
{{- if .Values.terminationGracePeriodSeconds -}}
{{- if le (int .Values.terminationGracePeriodSeconds) $floor -}}
{{- fail (printf "terminationGracePeriodSeconds must be greater than config.shutdownDrainSeconds + preStopSleepSeconds + 5 (%d)" $floor) -}}
{{- end -}}
{{- int .Values.terminationGracePeriodSeconds -}}
{{- else -}}
{{- add $floor 10 -}}
{{- end -}}
{{- end -}}

{{/* A value as an environment variable the service parses: whole numbers without an exponent
     (YAML numbers arrive as floats, and 2592000 would print as 2.592e+06), booleans as
     true/false, the rest as text. */}}
{{- define "socketio-service.envValue" -}}
{{- if and (kindIs "float64" .) (eq (floor .) .) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* Container security context shared by the service and its test pod. */}}
{{- define "socketio-service.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "socketio-service.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* ---- Edge (ingress, Gateway API, TLS) and monitoring glue ---- */}}

{{/* Seconds as a Gateway API duration: hours, minutes, seconds, each at most 5 digits (172800 -> 48h, 90 -> 1m30s, 0 -> 0s). */}}
{{- define "socketio-service.gatewayDuration" -}}
{{- $s := int . -}}
{{- if eq $s 0 -}}0s{{- else -}}
{{- $h := div $s 3600 -}}{{- $m := div (mod $s 3600) 60 -}}{{- $sec := mod $s 60 -}}
{{- if $h }}{{ $h }}h{{ end }}{{ if $m }}{{ $m }}m{{ end }}{{ if $sec }}{{ $sec }}s{{ end -}}
{{- end -}}
{{- end -}}

{{/* True when the Ingress serves TLS: a Secret and a host (TLS without a host is refused by the schema). */}}
{{- define "socketio-service.ingressTLS" -}}
{{- if and .Values.ingress.enabled .Values.ingress.tlsSecretName .Values.ingress.host -}}true{{- end -}}
{{- end -}}

{{/* The affinity cookie is Secure when asked or whenever the Ingress serves TLS. */}}
{{- define "socketio-service.cookieSecure" -}}
{{- if or .Values.stickySessions.cookieSecure (include "socketio-service.ingressTLS" .) -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{/* Grafana dashboard uid: dashboard.uid, or one per namespace/release (Grafana allows 40 characters). */}}
{{- define "socketio-service.dashboardUid" -}}
{{- if .Values.dashboard.uid -}}
{{- .Values.dashboard.uid -}}
{{- else -}}
{{- $id := printf "%s-%s" .Release.Namespace .Release.Name -}}
{{- if le (len $id) 40 -}}{{ $id }}{{- else -}}{{ printf "%s-%s" ($id | trunc 31 | trimSuffix "-") (sha256sum $id | trunc 8) }}{{- end -}}
{{- end -}}
{{- end -}}

{{/* Connected clients of this release's pods, summed: what KEDA divides by the replica count. The prometheus-adapter rule asks the same per pod. */}}
{{- define "socketio-service.connectionsQuery" -}}
sum(socketio_connected_clients{namespace="{{ .Release.Namespace }}",service="{{ include "socketio-service.fullname" . }}"})
{{- end -}}

{{/* Scaling behaviour shared by the HPA and KEDA's ScaledObject. */}}
{{- define "socketio-service.hpaBehavior" -}}
scaleUp:
  stabilizationWindowSeconds: 0
  policies:
    - type: Percent
      value: 100
      periodSeconds: 60
scaleDown:
  # Damped: every removed pod disconnects its websockets, so shrink slowly.
  stabilizationWindowSeconds: {{ .Values.autoscaling.scaleDownStabilizationSeconds }}
  policies:
    - type: Pods
      value: {{ .Values.autoscaling.scaleDownPodsPerMinute }}
      periodSeconds: 60
{{- end -}}

{{- /* ======================================================================================
     Redis (Valkey): architecture, memory cap, generated secrets and their checksum.
     Kept in one block so the Redis templates (redis-*.yaml, secret-*.yaml) own them.
     ====================================================================================== */}}

{{- define "socketio-service.redis.replication" -}}
{{- if and .Values.redis.enabled (eq .Values.redis.architecture "replication") -}}true{{- end -}}
{{- end -}}

{{/* Pod name N of the Redis StatefulSet, resolvable inside the namespace through the headless Service. */}}
{{- define "socketio-service.redis.podHost" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%d.%s" (include "socketio-service.redis.fullname" $ctx) (index . 1) (include "socketio-service.redis.fullname" $ctx) -}}
{{- end -}}

{{/* Sentinel addresses, host:port separated by commas (the redis+sentinel:// URL form). */}}
{{- define "socketio-service.redis.sentinels" -}}
{{- $hosts := list -}}
{{- range $i := until 3 -}}
{{- $hosts = append $hosts (printf "%s:26379" (include "socketio-service.redis.podHost" (list $ $i))) -}}
{{- end -}}
{{- join "," $hosts -}}
{{- end -}}

{{/* REDIS_URL of the chart's own Redis. Never carries the password: REDIS_PASSWORD does. */}}
{{- define "socketio-service.redis.url" -}}
{{- if include "socketio-service.redis.replication" . -}}
{{- printf "redis+sentinel://%s/0/%s" (include "socketio-service.redis.sentinels" .) .Values.redis.sentinel.masterSet -}}
{{- else -}}
{{- printf "redis://%s:6379/0" (include "socketio-service.redis.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* With replication: Sentinel's down-after plus 5 s for the election and the promotion. */}}
{{- define "socketio-service.redis.outageBufferSeconds" -}}
{{- add (div (int .Values.redis.sentinel.downAfterMilliseconds) 1000) 5 -}}
{{- end -}}

{{/* A Kubernetes memory quantity ("256Mi", "1G", 268435456) in bytes. */}}
{{- define "socketio-service.redis.quantityBytes" -}}
{{- $q := . -}}
{{- if or (kindIs "float64" $q) (kindIs "int" $q) (kindIs "int64" $q) -}}{{- $q = int64 $q | toString -}}{{- end -}}
{{- $units := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $q -}}
{{- $suffix := trimPrefix $num $q -}}
{{- if or (not $num) (not (hasKey $units $suffix)) -}}
{{- fail (printf "redis.resources.limits.memory %q: use a plain byte count or Ki, Mi, Gi, Ti, k, M, G, T" $q) -}}
{{- end -}}
{{- mulf (float64 $num) (index $units $suffix) | floor | int64 -}}
{{- end -}}

{{/* A Redis memory setting ("200mb", "1gb", "500m", "1048576") in bytes. */}}
{{- define "socketio-service.redis.redisBytes" -}}
{{- $units := dict "" 1 "b" 1 "k" 1000 "kb" 1024 "m" 1000000 "mb" 1048576 "g" 1000000000 "gb" 1073741824 -}}
{{- $num := regexFind "^[0-9]+" . -}}
{{- mul (int64 $num) (index $units (trimPrefix $num . | lower)) -}}
{{- end -}}

{{/* maxmemory: redis.maxmemory, or redis.maxmemoryPercent of the container's memory limit; always below the limit. */}}
{{- define "socketio-service.redis.maxmemory" -}}
{{- $limit := include "socketio-service.redis.quantityBytes" .Values.redis.resources.limits.memory | int64 -}}
{{- if .Values.redis.maxmemory -}}
{{- if ge (include "socketio-service.redis.redisBytes" .Values.redis.maxmemory | int64) $limit -}}
{{- fail (printf "redis.maxmemory %s must be below redis.resources.limits.memory (%d bytes), or the kernel kills Redis before it evicts" .Values.redis.maxmemory $limit) -}}
{{- end -}}
{{- .Values.redis.maxmemory -}}
{{- else -}}
{{- div (mul $limit (int64 .Values.redis.maxmemoryPercent)) 100 -}}
{{- end -}}
{{- end -}}

{{/* Generated secrets: the value in the cluster (lookup) if there is one, else a random one,
     remembered for the rest of this render so the Secret and the checksum agree. */}}
{{- define "socketio-service.redis.generatedPassword" -}}
{{- $memo := .Values.redis -}}
{{- if not (hasKey $memo "generatedPasswordMemo") -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "socketio-service.redis.secretName" .) -}}
{{- $value := randAlphaNum 40 -}}
{{- with (dig "data" "redis-password" "" $existing) -}}{{- $value = b64dec . -}}{{- end -}}
{{- $_ := set $memo "generatedPasswordMemo" $value -}}
{{- end -}}
{{- $memo.generatedPasswordMemo -}}
{{- end -}}

{{- define "socketio-service.jwt.generatedSecret" -}}
{{- $memo := .Values.jwt -}}
{{- if not (hasKey $memo "generatedSecretMemo") -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "socketio-service.jwt.secretName" .) -}}
{{- $value := randAlphaNum 64 | b64enc -}}
{{- with (dig "data" "jwt-secret" "" $existing) -}}{{- $value = . -}}{{- end -}}
{{- $_ := set $memo "generatedSecretMemo" $value -}}
{{- end -}}
{{- $memo.generatedSecretMemo -}}
{{- end -}}

{{/* What a Secret contributes to a pod checksum: a generated value itself (random, long), or for
     an existing Secret its name, key and resourceVersion (never its data: a weak password must
     not leak as a hash). Without cluster access (helm template, Argo CD, Flux) lookup is empty,
     so an existingSecret gives the same checksum on every render. */}}
{{- define "socketio-service.secretRef" -}}
{{- $ctx := index . 0 -}}
{{- $name := index . 1 -}}
{{- $s := lookup "v1" "Secret" $ctx.Release.Namespace $name -}}
{{- printf "%s/%s@%s" $name (index . 2) (dig "metadata" "resourceVersion" "" $s) -}}
{{- end -}}

{{- define "socketio-service.redis.secretChecksum" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- include "socketio-service.secretRef" (list . .Values.redis.auth.existingSecret .Values.redis.auth.existingSecretPasswordKey) | sha256sum -}}
{{- else -}}
{{- include "socketio-service.redis.generatedPassword" . | sha256sum -}}
{{- end -}}
{{- end -}}

{{/* checksum/secrets on the service pods: JWT key, JWT public key, admin password, Redis password or URL. */}}
{{- define "socketio-service.secretsChecksum" -}}
{{- $parts := list -}}
{{- if .Values.jwt.existingSecret -}}
{{- $parts = append $parts (include "socketio-service.secretRef" (list . .Values.jwt.existingSecret .Values.jwt.existingSecretKey)) -}}
{{- else -}}
{{- $parts = append $parts (include "socketio-service.jwt.generatedSecret" . | sha256sum) -}}
{{- end -}}
{{- with .Values.jwt.publicKeySecret -}}
{{- $parts = append $parts (include "socketio-service.secretRef" (list $ . $.Values.jwt.publicKeySecretKey)) -}}
{{- end -}}
{{- if and .Values.config.adminUi .Values.admin.existingSecret -}}
{{- $parts = append $parts (include "socketio-service.secretRef" (list . .Values.admin.existingSecret .Values.admin.existingSecretKey)) -}}
{{- end -}}
{{- if .Values.redis.enabled -}}
{{- $parts = append $parts (include "socketio-service.redis.secretChecksum" .) -}}
{{- else -}}
{{- $parts = append $parts (include "socketio-service.secretRef" (list . .Values.externalRedis.existingSecret .Values.externalRedis.existingSecretKey)) -}}
{{- end -}}
{{- join "\n" $parts | sha256sum -}}
{{- end -}}

{{/* Environment of redis.sh (no secret in it: the password is a mounted file). */}}
{{- define "socketio-service.redis.scriptEnv" -}}
{{- $fullname := include "socketio-service.redis.fullname" . -}}
- name: MODE
  value: {{ .Values.redis.architecture }}
{{- if include "socketio-service.redis.replication" . }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: ANNOUNCE_HOST
  value: "$(POD_NAME).{{ $fullname }}"
- name: BOOTSTRAP_HOST
  value: {{ include "socketio-service.redis.podHost" (list . 0) }}
- name: SENTINELS
  value: {{ include "socketio-service.redis.sentinels" . | replace "," " " | quote }}
- name: MASTER_SET
  value: {{ .Values.redis.sentinel.masterSet | quote }}
- name: QUORUM
  value: "2"
- name: DOWN_AFTER_MS
  value: {{ .Values.redis.sentinel.downAfterMilliseconds | quote }}
- name: FAILOVER_TIMEOUT_MS
  value: {{ .Values.redis.sentinel.failoverTimeoutMilliseconds | quote }}
{{- end }}
{{- end -}}

{{- define "socketio-service.redis.scriptMounts" -}}
- name: config
  mountPath: /opt/redis/config
  readOnly: true
- name: secret
  mountPath: /opt/redis/secret
  readOnly: true
- name: run
  mountPath: /run/redis
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "socketio-service.redis.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 999
runAsGroup: 999
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}
