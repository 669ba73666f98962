{{/* Names, labels, images and the flag/env rendering shared by every template. */}}

{{- define "ecrl.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Component name: "<fullname>-<component>" (e.g. ecrl-policy-server). */}}
{{- define "ecrl.name" -}}
{{- printf "%s-%s" (include "ecrl.fullname" .root) .component -}}
{{- end -}}

{{/* Cluster-scoped objects carry the namespace too: two releases never collide. */}}
{{- define "ecrl.clusterName" -}}
{{- printf "%s-%s-%s" .root.Release.Namespace (include "ecrl.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ecrl.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ecrl.labels" -}}
{{ include "ecrl.selectorLabels" . }}
app.kubernetes.io/part-of: ecrl
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* An ECRL image: "<registry>/<name>:<tag>", tag defaulting to the appVersion. */}}
{{- define "ecrl.image" -}}
{{- $img := .root.Values.image -}}
{{- printf "%s/%s:%s" $img.registry (index $img.names .name) (default .root.Chart.AppVersion $img.tag) -}}
{{- end -}}

{{- define "ecrl.rl" -}}
{{- if eq .Values.mode "rl" -}}true{{- end -}}
{{- end -}}

{{/* In-cluster addresses of the services, used to wire them together. */}}
{{- define "ecrl.policyServerAddress" -}}
{{- printf "%s.%s.svc:%v" (include "ecrl.name" (dict "root" . "component" "policy-server")) .Release.Namespace .Values.policyServer.ports.grpc -}}
{{- end -}}
{{- define "ecrl.collectorUrl" -}}
{{- printf "http://%s.%s.svc:%v" (include "ecrl.name" (dict "root" . "component" "collector")) .Release.Namespace .Values.collector.ports.http -}}
{{- end -}}
{{- define "ecrl.extenderUrl" -}}
{{- printf "http://%s.%s.svc:%v" (include "ecrl.name" (dict "root" . "component" "extender")) .Release.Namespace .Values.extender.port -}}
{{- end -}}
{{- define "ecrl.tritonUrl" -}}
{{- printf "http://%s.%s.svc:%v" .Values.triton.name .Release.Namespace .Values.triton.ports.http -}}
{{- end -}}

{{/*
Service settings as environment variables: {"metrics-listen": "0.0.0.0:9101"} with prefix
ECRL_POLICY_ → ECRL_POLICY_METRICS_LISTEN (services/flags.py env_value). Keys sorted.
*/}}
{{- define "ecrl.envFromConfig" -}}
{{- $config := .config -}}
{{- range $key := keys $config | sortAlpha }}
- name: {{ printf "%s%s" $.prefix ($key | upper | replace "-" "_") }}
  value: {{ index $config $key | toString | quote }}
{{- end }}
{{- end -}}

{{/*
Service settings as command-line flags, for the services that read flags only: a boolean true
is a bare switch (--shadow), false leaves it out. Keys sorted.
*/}}
{{- define "ecrl.argsFromConfig" -}}
{{- $config := .config -}}
{{- range $key := keys $config | sortAlpha }}
{{- $value := index $config $key }}
{{- if kindIs "bool" $value }}
{{- if $value }}
- --{{ $key }}
{{- end }}
{{- else }}
- {{ printf "--%s=%s" $key (toString $value) | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The writable paths of a read-only root filesystem. */}}
{{- define "ecrl.tmpVolume" -}}
- name: tmp
  emptyDir: {sizeLimit: 64Mi}
{{- end -}}
{{- define "ecrl.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "ecrl.podSpecCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}
