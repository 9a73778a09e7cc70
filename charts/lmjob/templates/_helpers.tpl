{{/*
Names, labels and the RBAC rule split shared by every template.
*/}}

{{/* Chart name, overridable. */}}
{{- define "lmjob.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name: the release name, plus the chart name unless it contains it. */}}
{{- define "lmjob.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The operator's objects (Deployment, Service, roles): `<fullname>-operator`. */}}
{{- define "lmjob.operatorName" -}}
{{- printf "%s-operator" (include "lmjob.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lmjob.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "lmjob.labels" -}}
helm.sh/chart: {{ include "lmjob.chart" . }}
{{ include "lmjob.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: lmjob
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the operator pods; fixed for the life of a release. */}}
{{- define "lmjob.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lmjob.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lmjob.operatorSelectorLabels" -}}
{{ include "lmjob.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "lmjob.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lmjob.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest; the tag defaults to the chart's appVersion. */}}
{{- define "lmjob.image" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (default .appVersion .tag) }}
{{- end }}
{{- end }}

{{/*
The operator's permissions, defined once in files/operator-rules.yaml (a list of
PolicyRules written by the operator's authors), split for the namespaced mode:
resources that exist per namespace go to a Role in each watched namespace, the
cluster-scoped ones (CRDs, namespaces, ClusterKopfPeerings, non-resource URLs) to
a ClusterRole. In cluster mode one ClusterRole holds them all.
Returns YAML: {namespaced: [rules], cluster: [rules]}.
*/}}
{{- define "lmjob.rbac.clusterScoped" -}}
customresourcedefinitions namespaces nodes persistentvolumes storageclasses priorityclasses
clusterroles clusterrolebindings clusterkopfpeerings runtimeclasses ingressclasses
validatingwebhookconfigurations mutatingwebhookconfigurations apiservices
tokenreviews subjectaccessreviews selfsubjectaccessreviews selfsubjectrulesreviews
certificatesigningrequests validatingadmissionpolicies validatingadmissionpolicybindings
resourceflavors workloadpriorityclasses clusterqueues cohorts
{{- end }}

{{- define "lmjob.rbac.split" -}}
{{- $clusterScoped := splitList " " (include "lmjob.rbac.clusterScoped" . | replace "\n" " ") }}
{{- $rules := .Files.Get "files/operator-rules.yaml" | fromYamlArray }}
{{- if not $rules }}
{{- fail "files/operator-rules.yaml is missing or holds no rules: the operator's RBAC comes from it" }}
{{- end }}
{{- $namespaced := list }}
{{- $cluster := list }}
{{- range $rule := $rules }}
{{- if $rule.nonResourceURLs }}
{{- $cluster = append $cluster $rule }}
{{- else }}
{{- $nsResources := list }}
{{- $clResources := list }}
{{- range $resource := $rule.resources }}
{{- if has (first (splitList "/" $resource)) $clusterScoped }}
{{- $clResources = append $clResources $resource }}
{{- else }}
{{- $nsResources = append $nsResources $resource }}
{{- end }}
{{- end }}
{{- if $nsResources }}
{{- $namespaced = append $namespaced (merge (dict "resources" $nsResources) (omit $rule "resources")) }}
{{- end }}
{{- if $clResources }}
{{- $cluster = append $cluster (merge (dict "resources" $clResources) (omit $rule "resources")) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml (dict "namespaced" $namespaced "cluster" $cluster "all" $rules) }}
{{- end }}
