{{/* Labels on everything Esker's own templates create. */}}
{{- define "esker.labels" -}}
app.kubernetes.io/name: esker
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The Esker configuration the hub reads: .Values.esker.config, with kubernetes.namespace defaulting
     to the release's namespace, and hub.mode kubernetes (the checks that depend on the backend follow it). */}}
{{- define "esker.config" -}}
{{- $cfg := deepCopy .Values.esker.config -}}
{{- $k8s := merge (deepCopy ($cfg.kubernetes | default dict)) (dict "namespace" .Release.Namespace) -}}
{{- $_ := set $cfg "kubernetes" $k8s -}}
{{- $hub := merge (dict "mode" "kubernetes") (deepCopy ($cfg.hub | default dict)) -}}
{{- $_ := set $cfg "hub" $hub -}}
{{- /* The chart's task broker (templates/functions-broker.yaml) unless functions.broker.url names another. */ -}}
{{- if .Values.esker.functionsBroker.enabled -}}
{{- $fn := deepCopy ($cfg.functions | default dict) -}}
{{- $broker := merge (deepCopy ($fn.broker | default dict)) (dict "url" "redis://esker-functions-broker:6379/0") -}}
{{- $_ := set $fn "broker" $broker -}}
{{- $_ := set $cfg "functions" $fn -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end }}

{{- define "esker.sparkEnabled" -}}
{{- $spark := .Values.esker.config.spark | default dict -}}
{{- if ne (toString $spark.enabled) "false" }}true{{ end -}}
{{- end }}

{{- define "esker.sparkMode" -}}
{{- ((.Values.esker.config.kubernetes | default dict).spark_mode) | default "standalone" -}}
{{- end }}

{{/* Ports the Spark driver (the notebook pod) listens on. They are fixed in
     esker.spawner.k8s_objects (SPARK_DRIVER_PORT, SPARK_BLOCK_MANAGER_PORT); tests check they agree. */}}
{{- define "esker.driverPorts" -}}
- {port: 7078, protocol: TCP}
- {port: 7079, protocol: TCP}
{{- end }}

{{- define "esker.dnsEgress" -}}
- to:
    - namespaceSelector: {}
      podSelector:
        matchLabels:
          k8s-app: kube-dns
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end }}

{{- define "esker.s3Egress" -}}
{{- with .Values.esker.networkPolicy.s3 }}
{{- if .to }}
- to:
    {{- toYaml .to | nindent 4 }}
  ports:
    {{- range .ports }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "esker.singleuserSelector" -}}
matchLabels:
  app: jupyterhub
  component: singleuser-server
{{- end }}

{{- define "esker.executorSelector" -}}
matchLabels:
  spark-role: executor
{{- end }}
