#!/usr/bin/env bash
# Creates a kind cluster whose only NetworkPolicy enforcer is npenforce:
#   1. kind cluster from cluster.yaml (no default CNI),
#   2. bpffs mounted on every node (/sys/fs/bpf, where the agent pins its state),
#   3. kindnet with --network-policy=false as the CNI (kindnet.yaml), checked on every node,
#   4. the agent image built from deploy/Dockerfile and loaded into the nodes,
#   5. deploy/kubernetes applied, and the DaemonSet's rollout awaited (Ready = enforcing).
#
# Needs docker, kind (tested with v0.32.0) and kubectl. Re-running it on an existing cluster
# skips the creation and rebuilds, reloads and re-applies the agent.
#
# Environment: KIND_CLUSTER_NAME (default npenforce, also what kind itself reads),
# ROLLOUT_TIMEOUT (default 5m).
set -euo pipefail

readonly IMAGE=npenforce:dev
CLUSTER="${KIND_CLUSTER_NAME:-npenforce}"
CONTEXT="kind-${CLUSTER}"
ROLLOUT_TIMEOUT="${ROLLOUT_TIMEOUT:-5m}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "${HERE}/../.." && pwd)"

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'create-cluster: %s\n' "$*" >&2; exit 1; }
k() { kubectl --context "${CONTEXT}" "$@"; }

for tool in docker kind kubectl; do
  command -v "${tool}" >/dev/null || die "${tool} is required (see "Deploy to a cluster" in README.md)"
done
kind_version=$(kind version)
log "${kind_version}"

if kind get clusters 2>/dev/null | grep -qx "${CLUSTER}"; then
  log "cluster ${CLUSTER} exists, reusing it"
else
  log "creating cluster ${CLUSTER} (no default CNI: nodes stay NotReady until kindnet runs)"
  kind create cluster --name "${CLUSTER}" --config "${HERE}/cluster.yaml"
fi

mapfile -t NODES < <(kind get nodes --name "${CLUSTER}")
[[ ${#NODES[@]} -gt 0 ]] || die "cluster ${CLUSTER} has no nodes"

# systemd mounts bpffs at boot on ordinary hosts but skips it inside containers, and kind
# nodes are containers. Mounting it is the node's job, not the agent's: doing it from the pod
# would need CAP_SYS_ADMIN and Bidirectional propagation, i.e. a privileged container.
log "mounting bpffs at /sys/fs/bpf on ${NODES[*]}"
for node in "${NODES[@]}"; do
  docker exec "${node}" sh -c \
    'mountpoint -q /sys/fs/bpf || mount -t bpf -o mode=0700 bpf /sys/fs/bpf; mount --make-shared /sys/fs/bpf'
done

log "installing kindnet without NetworkPolicy enforcement"
k apply -f "${HERE}/kindnet.yaml"
k -n kube-system rollout status daemonset/kindnet --timeout="${ROLLOUT_TIMEOUT}"
k wait --for=condition=Ready nodes --all --timeout="${ROLLOUT_TIMEOUT}"
k -n kube-system rollout status deployment/coredns --timeout="${ROLLOUT_TIMEOUT}"

# Belt and braces: kube-network-policies (kindnet's enforcer) keeps its rules in the nftables
# table "kindnet-network-policies". It must not exist anywhere.
for node in "${NODES[@]}"; do
  if docker exec "${node}" nft list tables 2>/dev/null | grep -q 'kindnet-network-policies'; then
    die "${node} has kindnet's network policy table: kindnet still enforces policies"
  fi
done

log "building ${IMAGE} from deploy/Dockerfile"
# --provenance=false: a single-manifest image. With an attestation manifest, `docker save`
# leaves a dangling reference that makes `kind load` fail ("content digest ... not found").
docker build --provenance=false -f "${REPO}/deploy/Dockerfile" -t "${IMAGE}" "${REPO}"

log "loading ${IMAGE} into ${CLUSTER}"
kind load docker-image "${IMAGE}" --name "${CLUSTER}"

log "installing npenforce"
reinstall=false
if k -n npenforce-system get daemonset/npenforce >/dev/null 2>&1; then
  reinstall=true
fi
k apply -k "${REPO}/deploy/kubernetes"
if [[ ${reinstall} == true ]]; then
  # Same tag, rebuilt image: replace the pods (one node at a time) so they run it.
  k -n npenforce-system rollout restart daemonset/npenforce
fi
k -n npenforce-system rollout status daemonset/npenforce --timeout="${ROLLOUT_TIMEOUT}"

log "ready: every node enforces. Next: deploy/kind/run-recipes.sh; remove: deploy/kind/teardown.sh"
