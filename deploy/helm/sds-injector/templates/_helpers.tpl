{{/* Name of the chart, for labels. */}}
{{- define "sds-injector.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified name: the release name when it contains the chart name
(so `helm install sds-injector` gives "sds-injector"), else <release>-<chart>.
The Service, the webhook configurations and the Secrets are named after it.
*/}}
{{- define "sds-injector.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sds-injector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sds-injector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sds-injector.labels" -}}
{{ include "sds-injector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "sds-injector.serviceAccountName" -}}
{{- default (include "sds-injector.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "sds-injector.secretName" -}}
{{- default (printf "%s-tls" (include "sds-injector.fullname" .)) .Values.certificates.secretName -}}
{{- end -}}

{{- define "sds-injector.servingCertificateName" -}}
{{- printf "%s-serving" (include "sds-injector.fullname" .) -}}
{{- end -}}

{{- define "sds-injector.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The sds-agent image: agentImage pinned by digest, else tagged with
agentImage.tag or the chart's appVersion (the injector's version). */}}
{{- define "sds-injector.agentImage" -}}
{{- $tag := default .Chart.AppVersion .Values.agentImage.tag -}}
{{- if .Values.agentImage.digest -}}
{{- printf "%s@%s" .Values.agentImage.repository .Values.agentImage.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.agentImage.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Names of the enabled MutatingWebhookConfigurations, comma separated. */}}
{{- define "sds-injector.webhookConfigurationNames" -}}
{{- $names := list -}}
{{- $fullname := include "sds-injector.fullname" . -}}
{{- if .Values.modes.namespace.enabled }}{{ $names = append $names (printf "%s-namespace" $fullname) }}{{ end -}}
{{- if .Values.modes.perGateway.enabled }}{{ $names = append $names (printf "%s-per-gateway" $fullname) }}{{ end -}}
{{- if .Values.modes.clusterWide.enabled }}{{ $names = append $names (printf "%s-cluster-wide" $fullname) }}{{ end -}}
{{- join "," $names -}}
{{- end -}}

{{/*
The engine configuration file: .Values.config without empty strings, nulls
and empty maps, so that those fall back to the engine's defaults. Lists are
kept even when empty (an empty excludedNamespaces means "exclude none").
*/}}
{{- define "sds-injector.config" -}}
{{- $cfg := dict -}}
{{- range $k, $v := .Values.config -}}
{{- if or (kindIs "bool" $v) (kindIs "slice" $v) (not (empty $v)) -}}
{{- $_ := set $cfg $k $v -}}
{{- end -}}
{{- end -}}
{{- if not .Values.config.sdsAgentImage -}}
{{- $_ := set $cfg "sdsAgentImage" (include "sds-injector.agentImage" .) -}}
{{- end -}}
{{- $_ := unset $cfg "apiVersion" -}}
{{- $_ := unset $cfg "kind" -}}
apiVersion: sds-injector.io/v1alpha1
kind: InjectorConfig
{{ toYaml $cfg -}}
{{- end -}}

{{/*
Namespaces the API server never sends to the webhook: the engine's excluded
namespaces and the injector's own namespace (so it can always restart).
*/}}
{{- define "sds-injector.excludedNamespaces" -}}
{{- $ns := list -}}
{{- range .Values.config.excludedNamespaces }}{{ $ns = append $ns . }}{{ end -}}
{{- $ns = append $ns .Release.Namespace | uniq -}}
{{- $q := list -}}
{{- range $ns }}{{ $q = append $q (quote .) }}{{ end -}}
[{{ join ", " $q }}]
{{- end -}}

{{/* Common part of every webhook in the configurations. */}}
{{- define "sds-injector.clientConfig" -}}
clientConfig:
  service:
    name: {{ include "sds-injector.fullname" . }}
    namespace: {{ .Release.Namespace }}
    path: /inject
    port: {{ .Values.service.port }}
rules:
- operations: ["CREATE"]
  apiGroups: [""]
  apiVersions: ["v1"]
  resources: ["pods"]
  scope: Namespaced
{{- end -}}

{{/*
CEL for one label selector requirement of a gateway profile. Each term
stands alone (it checks for the labels map itself), so a profile's terms can
be joined with &&. The schema restricts label keys and values to Kubernetes
syntax, which contains no quotes, so they can be placed in CEL strings as is.
Input: dict "key" "op" "values".
*/}}
{{- define "sds-injector.celRequirement" -}}
{{- $l := "object.metadata.labels" -}}
{{- $k := printf "'%s'" .key -}}
{{- $vals := list -}}
{{- range .values }}{{ $vals = append $vals (printf "'%s'" .) }}{{ end -}}
{{- if eq .op "Equals" -}}
(has({{ $l }}) && {{ $k }} in {{ $l }} && {{ $l }}[{{ $k }}] == {{ first $vals }})
{{- else if eq .op "In" -}}
(has({{ $l }}) && {{ $k }} in {{ $l }} && {{ $l }}[{{ $k }}] in [{{ join ", " $vals }}])
{{- else if eq .op "NotIn" -}}
(!has({{ $l }}) || !({{ $k }} in {{ $l }}) || !({{ $l }}[{{ $k }}] in [{{ join ", " $vals }}]))
{{- else if eq .op "Exists" -}}
(has({{ $l }}) && {{ $k }} in {{ $l }})
{{- else if eq .op "DoesNotExist" -}}
(!has({{ $l }}) || !({{ $k }} in {{ $l }}))
{{- else -}}
{{- fail (printf "gateway profile selector: unsupported operator %q" .op) -}}
{{- end -}}
{{- end -}}

{{/* CEL that is true for pods one gateway profile recognises. */}}
{{- define "sds-injector.celProfile" -}}
{{- $terms := list -}}
{{- with .namespaces -}}
{{- $ns := list -}}
{{- range . }}{{ $ns = append $ns (printf "'%s'" .) }}{{ end -}}
{{- $terms = append $terms (printf "request.namespace in [%s]" (join ", " $ns)) -}}
{{- end -}}
{{- range $k, $v := .selector.matchLabels -}}
{{- $terms = append $terms (include "sds-injector.celRequirement" (dict "key" $k "op" "Equals" "values" (list $v))) -}}
{{- end -}}
{{- range .selector.matchExpressions -}}
{{- $terms = append $terms (include "sds-injector.celRequirement" (dict "key" .key "op" .operator "values" (default list .values))) -}}
{{- end -}}
{{- with .requireContainers -}}
{{- $names := list -}}
{{- range . }}{{ $names = append $names (printf "'%s'" .) }}{{ end -}}
{{- $in := join ", " $names -}}
{{- $terms = append $terms (printf "((has(object.spec.containers) && object.spec.containers.exists(c, c.name in [%s])) || (has(object.spec.initContainers) && object.spec.initContainers.exists(c, c.name in [%s])))" $in $in) -}}
{{- end -}}
({{ join " && " $terms }})
{{- end -}}

{{/*
The built-in gateway profiles' selectors (webhook/inject/profiles.go; the
install tests check every built-in profile's pods against this condition).
Opt-in-only profiles (Contour) are included so that their pods get the
warning saying how to opt in.
*/}}
{{- define "sds-injector.builtinSelectors" -}}
profiles:
- selector: {matchLabels: {gloo: gateway-proxy}}
- selector: {matchLabels: {kgateway: kube-gateway}}
- selector: {matchLabels: {gloo: kube-gateway}}
- selector: {matchLabels: {app.kubernetes.io/managed-by: envoy-gateway, app.kubernetes.io/component: proxy}}
- selector: {matchLabels: {app.kubernetes.io/name: contour, app.kubernetes.io/component: envoy}}
- selector: {matchLabels: {app: envoy}}
  requireContainers: [shutdown-manager, envoy-initconfig]
- selector: {matchExpressions: [{key: app.kubernetes.io/name, operator: In, values: [emissary-ingress, ambassador]}]}
{{- end -}}

{{/*
The matchConditions entry that narrows a mode's webhook to pods that look
like gateways: a pod carrying the sds-injector.io/inject label (the
objectSelector already keeps "false" away) or annotation with any value but
"false" (so that a typo reaches the engine, which answers with what to fix),
the generic gateway-container annotation, a built-in gateway profile's
selector (unless config.disableBuiltinProfiles) or one of
config.gatewayProfiles. Every other pod is none of the injector's business:
the apiserver does not call the webhook for it. Used by namespace and
cluster-wide mode; the install tests hold it to the engine's profiles.
*/}}
{{- define "sds-injector.gatewayCondition" -}}
- name: looks-like-a-gateway
  expression: >-
    (has(object.metadata.labels) && 'sds-injector.io/inject' in object.metadata.labels) ||
    (has(object.metadata.annotations) && (
      'sds-injector.io/gateway-container' in object.metadata.annotations ||
      ('sds-injector.io/inject' in object.metadata.annotations && object.metadata.annotations['sds-injector.io/inject'] != 'false')
    ))
    {{- if not .Values.config.disableBuiltinProfiles }}
    {{- range (include "sds-injector.builtinSelectors" . | fromYaml).profiles }} ||
    {{ include "sds-injector.celProfile" . }}
    {{- end }}
    {{- end }}
    {{- range .Values.config.gatewayProfiles }} ||
    {{ include "sds-injector.celProfile" . }}
    {{- end }}
{{- end -}}

{{/* Whether the injector discovers the installed Istio (config.istio: auto). */}}
{{- define "sds-injector.istioDiscovery" -}}
{{- if eq (toString (default "" .Values.config.istio)) "auto" }}true{{ end -}}
{{- end -}}

{{/* Whether the injector needs an API token: self-managed certificates or Istio discovery. */}}
{{- define "sds-injector.apiAccess" -}}
{{- if or (eq .Values.certificates.mode "self-managed") (include "sds-injector.istioDiscovery" .) }}true{{ else }}false{{ end -}}
{{- end -}}

{{/* Whether Istio discovery scans injected pods for stale agents. */}}
{{- define "sds-injector.staleScan" -}}
{{- $i := default "5m" (.Values.istio).staleAgentScanInterval -}}
{{- if and (include "sds-injector.istioDiscovery" .) (not (regexMatch "^0+(ns|us|ms|s|m|h)?$" $i)) }}true{{ end -}}
{{- end -}}
