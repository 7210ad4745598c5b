{{/*
Names and labels shared by every template.
*/}}

{{- define "fedge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<chart>, or the release name alone when it already contains the chart name. */}}
{{- define "fedge.fullname" -}}
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

{{/* The operator's resources: <fullname>-operator. */}}
{{- define "fedge.operatorName" -}}
{{- printf "%s-operator" (include "fedge.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fedge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels (immutable in a Deployment: never add to them). */}}
{{- define "fedge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fedge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Standard labels; pass a dict with "ctx" (the root context) and "component". */}}
{{- define "fedge.labels" -}}
app.kubernetes.io/name: {{ include "fedge.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: fedge
helm.sh/chart: {{ include "fedge.chart" .ctx }}
{{- end -}}

{{/* An image reference; pass a dict with "ctx" and "image" (repository + tag). */}}
{{- define "fedge.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* The restricted Pod Security level's pod-level settings (uid/gid 65532: "nonroot"). */}}
{{- define "fedge.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The restricted Pod Security level's container-level settings. */}}
{{- define "fedge.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Rules over the job resources: in a ClusterRole (all namespaces) or a Role (watchNamespace). */}}
{{- define "fedge.jobRules" -}}
- apiGroups: [fedge.io]
  resources: [federatedtrainingjobs]
  verbs: [get, list, watch, patch, update, delete]
- apiGroups: [fedge.io]
  resources: [federatedtrainingjobs/status, federatedtrainingjobs/finalizers]
  verbs: [get, patch, update]
- apiGroups: [""]
  resources: [pods, services, secrets, configmaps, serviceaccounts, persistentvolumeclaims]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* A label map as KEY=VALUE,KEY=VALUE (sorted by key), for --dns-pod-selector. */}}
{{- define "fedge.labelPairs" -}}
{{- $pairs := list -}}
{{- range $k, $v := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
