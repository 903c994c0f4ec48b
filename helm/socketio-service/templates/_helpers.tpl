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
