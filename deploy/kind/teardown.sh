#!/usr/bin/env bash
# Deletes the kind cluster made by create-cluster.sh (nodes, and with them every pinned
# program: kind nodes are containers, their bpffs goes away with them). The image npenforce:dev
# stays in the local Docker image store: `docker image rm npenforce:dev` to remove it too.
set -euo pipefail

CLUSTER="${KIND_CLUSTER_NAME:-npenforce}"

command -v kind >/dev/null || { echo "teardown: kind is required" >&2; exit 1; }
kind delete cluster --name "${CLUSTER}"
