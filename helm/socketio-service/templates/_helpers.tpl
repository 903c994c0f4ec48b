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
