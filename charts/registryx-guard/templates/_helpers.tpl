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
{{- define "rxg.eventsConfigMap" -}}{{ include "rxg.name" . }}-events{{- end -}}
{{- define "rxg.service" -}}{{ include "rxg.name" . }}-webhook{{- end -}}
{{- define "rxg.tlsSecret" -}}{{ default (printf "%s-tls" (include "rxg.name" .)) .Values.tls.existingSecret }}{{- end -}}
{{/* The generated CA and certificate, reused from the existing Secret so upgrades keep them.
     The CA's private key is never kept: it signs the serving certificate in this render and is dropped,
     so that nothing in the cluster (the webhook's ServiceAccount reads the Secrets of its namespace, for
     policies) can mint certificates the API server would trust. A new tls.rotation therefore issues a
     new CA and certificate, and `ca` (the webhooks' caBundle, kept in the Secret as ca.crt) holds the new
     CA and the one before it: the API server trusts the replicas that still serve the old certificate
     and those that have loaded the new one, so no admission fails while the kubelet updates the files.
     An older Secret's ca.key is not carried over, so the first upgrade with this chart removes it. */}}
{{- define "rxg.generatedTLS" -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "rxg.tlsSecret" .) -}}
{{- $svc := include "rxg.service" . -}}
{{- $names := list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) "localhost" -}}
{{- $rotation := toString .Values.tls.rotation -}}
{{- if and $secret $secret.data (index $secret.data "ca.crt") -}}
{{- $annotations := $secret.metadata.annotations | default dict -}}
{{- $issued := index $annotations "registryx.io/tls-rotation" | default "1" -}}
{{- if ne $issued $rotation -}}
{{- /* The CA that signed the certificate being replaced: the first of the stored bundle. */ -}}
{{- $previous := regexFind "-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----" (index $secret.data "ca.crt" | b64dec) -}}
{{- $ca := genCA "registryx-guard-ca" 3650 -}}
{{- $cert := genSignedCert $svc (list "127.0.0.1") $names 3650 $ca -}}
ca: {{ printf "%s\n%s\n" (trim $ca.Cert) $previous | b64enc }}
crt: {{ $cert.Cert | b64enc }}
key: {{ $cert.Key | b64enc }}
{{- else -}}
ca: {{ index $secret.data "ca.crt" }}
crt: {{ index $secret.data "tls.crt" }}
key: {{ index $secret.data "tls.key" }}
{{- end -}}
{{- else -}}
{{- $ca := genCA "registryx-guard-ca" 3650 -}}
{{- $cert := genSignedCert $svc (list "127.0.0.1") $names 3650 $ca -}}
ca: {{ $ca.Cert | b64enc }}
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
