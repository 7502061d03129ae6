#!/bin/sh
# Helm post-renderer that removes aad-pod-identity's NMI from the chart's output and keeps the rest (MIC, its
# RBAC and secret, the exceptions; the CRDs are outside post-rendering anyway). The chart has no switch for NMI
# alone; with this, `helm upgrade` deletes the NMI DaemonSet, ServiceAccount, ClusterRole and ClusterRoleBinding
# from the cluster and keeps managing MIC:
#
#   helm upgrade aad-pod-identity aad-pod-identity/aad-pod-identity -n aad-pod-identity --reuse-values \
#     --post-renderer ./drop-upstream-nmi.sh
#
# The objects are named <chart name>-nmi: aad-pod-identity-nmi, or <nameOverride>-nmi (set NMI_NAME then).
# Needs kubectl (for `kubectl kustomize`) on PATH.
set -eu
name=${NMI_NAME:-aad-pod-identity-nmi}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/chart.yaml"
{
  echo "resources:"
  echo "- chart.yaml"
  echo "patches:"
  for kind_and_version in DaemonSet:apps/v1 ServiceAccount:v1 ClusterRole:rbac.authorization.k8s.io/v1 \
                          ClusterRoleBinding:rbac.authorization.k8s.io/v1; do
    kind=${kind_and_version%%:*}
    version=${kind_and_version#*:}
    printf -- '- target:\n    kind: %s\n    name: %s\n  patch: |-\n' "$kind" "$name"
    printf '    $patch: delete\n    apiVersion: %s\n    kind: %s\n    metadata:\n      name: %s\n' "$version" "$kind" "$name"
  done
} > "$work/kustomization.yaml"
kubectl kustomize "$work"
