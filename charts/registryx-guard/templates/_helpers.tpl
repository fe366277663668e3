{{- define "rxg.name" -}}{{ .Release.Name }}{{- end -}}
{{- define "rxg.labels" -}}
app.kubernetes.io/name: registryx-guard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
{{- define "rxg.selector" -}}
app.kubernetes.io/name: registryx-guard
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "rxg.service" -}}{{ include "rxg.name" . }}-webhook{{- end -}}
{{- define "rxg.tlsSecret" -}}{{ default (printf "%s-tls" (include "rxg.name" .)) .Values.tls.existingSecret }}{{- end -}}
{{/* The generated CA and certificate, reused from the existing Secret so upgrades keep them; a new
     tls.rotation issues a new serving certificate from the same CA (kept in the Secret as ca.key), so
     that the webhooks' caBundle never changes under running replicas. */}}
{{- define "rxg.generatedTLS" -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "rxg.tlsSecret" .) -}}
{{- $svc := include "rxg.service" . -}}
{{- $names := list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) "localhost" -}}
{{- $rotation := toString .Values.tls.rotation -}}
{{- if and $secret $secret.data (index $secret.data "ca.crt") -}}
{{- $annotations := $secret.metadata.annotations | default dict -}}
{{- $issued := index $annotations "registryx.io/tls-rotation" | default "1" -}}
{{- if and (ne $issued $rotation) (not (index $secret.data "ca.key")) -}}
{{- fail (printf "tls.rotation changed, but the Secret %s holds no ca.key (made by an older chart): delete the Secret and upgrade to make a new CA and certificate" (include "rxg.tlsSecret" .)) -}}
{{- end -}}
{{- if ne $issued $rotation -}}
{{- $ca := buildCustomCert (index $secret.data "ca.crt") (index $secret.data "ca.key") -}}
{{- $cert := genSignedCert $svc (list "127.0.0.1") $names 3650 $ca -}}
ca: {{ index $secret.data "ca.crt" }}
caKey: {{ index $secret.data "ca.key" }}
crt: {{ $cert.Cert | b64enc }}
key: {{ $cert.Key | b64enc }}
{{- else -}}
ca: {{ index $secret.data "ca.crt" }}
caKey: {{ index $secret.data "ca.key" | default "" }}
crt: {{ index $secret.data "tls.crt" }}
key: {{ index $secret.data "tls.key" }}
{{- end -}}
{{- else -}}
{{- $ca := genCA "registryx-guard-ca" 3650 -}}
{{- $cert := genSignedCert $svc (list "127.0.0.1") $names 3650 $ca -}}
ca: {{ $ca.Cert | b64enc }}
caKey: {{ $ca.Key | b64enc }}
crt: {{ $cert.Cert | b64enc }}
key: {{ $cert.Key | b64enc }}
{{- end -}}
{{- end -}}
{{/* Call with a dict: path, Values, Release, Chart, tls (the one generated CA of this render). */}}
{{- define "rxg.clientConfig" -}}
{{- $tls := .tls -}}
clientConfig:
  {{- if .Values.webhook.url }}
  url: {{ printf "%s%s" (trimSuffix "/" .Values.webhook.url) .path }}
  {{- else }}
  service:
    name: {{ include "rxg.service" . }}
    namespace: {{ .Release.Namespace }}
    path: {{ .path }}
    port: 443
  {{- end }}
  {{- if .Values.certManager.enabled }}
  {{- else if .Values.tls.caBundle }}
  caBundle: {{ .Values.tls.caBundle | b64enc }}
  {{- else if .Values.tls.generate }}
  caBundle: {{ $tls.ca }}
  {{- end }}
{{- end -}}
{{- define "rxg.namespaceSelector" -}}
{{- if not (has .Values.webhook.namespaces (list "optIn" "all")) -}}
{{- fail (printf "webhook.namespaces must be optIn or all, not %q" .Values.webhook.namespaces) -}}
{{- end -}}
namespaceSelector:
  matchExpressions:
    {{- if eq .Values.webhook.namespaces "optIn" }}
    - key: {{ .Values.webhook.optInLabel }}
      operator: In
      values: ["true"]
    {{- end }}
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: {{ concat (list .Release.Namespace) .Values.webhook.excludedNamespaces | uniq | toJson }}
    {{- with .Values.webhook.namespaceSelectorExpressions }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}
{{- define "rxg.rules" -}}
rules:
  - apiGroups: [""]
    apiVersions: ["v1"]
    operations: ["CREATE", "UPDATE"]
    resources: ["pods", "pods/ephemeralcontainers", "replicationcontrollers"]
    scope: Namespaced
  - apiGroups: ["apps"]
    apiVersions: ["v1"]
    operations: ["CREATE", "UPDATE"]
    resources: ["deployments", "replicasets", "statefulsets", "daemonsets"]
    scope: Namespaced
  - apiGroups: ["batch"]
    apiVersions: ["v1"]
    operations: ["CREATE", "UPDATE"]
    resources: ["jobs", "cronjobs"]
    scope: Namespaced
{{- end -}}
