{{/* Locust's environment, the same for the master and the workers (loadtest/locustfile.py). */}}
{{- define "ecrl.loadtestEnv" -}}
{{- $l := .Values.loadtest -}}
- {name: ECRL_SHAPE, value: {{ $l.shape | quote }}}
- {name: ECRL_TIME_SCALE, value: {{ $l.timeScale | toString | quote }}}
- {name: ECRL_USERS_SCALE, value: {{ $l.usersScale | toString | quote }}}
- name: ECRL_GRPC_URL
  value: {{ printf "%s.%s.svc:%v" .Values.triton.name .Release.Namespace .Values.triton.ports.grpc | quote }}
{{- range $key := keys $l.env | sortAlpha }}
- {name: {{ $key }}, value: {{ index $l.env $key | toString | quote }}}
{{- end }}
{{- end -}}
