#!/usr/bin/env bash
# Runs the public NetworkPolicy recipes (github.com/ahmetb/kubernetes-network-policy-recipes)
# and the two seed cards (NP-05 and NP-07, the same scenarios as recipes 05 and 07) against
# the kind cluster made by create-cluster.sh, with kubectl the way the cards do it: servers
# from `kubectl run ... --expose`, the cards' policies applied as written, and each probe a
# fresh `kubectl run test-$RANDOM --image=alpine` pod running the card's wget (or nc). The
# cards open an interactive shell (`-i -t -- sh`) and type the command; here the command is
# the pod's command (`--rm -i --restart=Never ... -- wget ...`), which is the same request.
#
# Prints one row per probe and a verdict table at the end; exits 1 if any observed verdict
# differs from the expected one (or a probe could not run), 0 otherwise.
#
# Usage: run-recipes.sh [RECIPE...]     e.g. run-recipes.sh 07 11   (default: all)
# Environment: KIND_CLUSTER_NAME (default npenforce), CLIENT_IMAGE (default alpine, as the
# cards), SETTLE_SECONDS (pause after applying a policy, default 2), POD_TIMEOUT (default 3m).
#
# Where a card shows no probe (03, 08, 12) the probes are derived from its text and marked
# "(derived)". Recipe 08 uses a NodePort instead of a LoadBalancer (kind has none) and an
# external client container on kind's Docker network.
set -euo pipefail

CLUSTER="${KIND_CLUSTER_NAME:-npenforce}"
CONTEXT="kind-${CLUSTER}"
KIND_NETWORK="${KIND_EXPERIMENTAL_DOCKER_NETWORK:-kind}"
CLIENT_IMAGE="${CLIENT_IMAGE:-alpine}"
SETTLE_SECONDS="${SETTLE_SECONDS:-2}"
POD_TIMEOUT="${POD_TIMEOUT:-3m}"
RECIPES=(01 02 02a 03 04 05 06 07 08 09 10 11 12 14)
# The cards' policies as files, the same files that `npenforce demo` and its tests apply.
RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../recipes" && pwd)"

ROWS=()
MISMATCHES=0
CREATED_NS=()
CURRENT=""

k() { kubectl --context "${CONTEXT}" "$@"; }
log() { printf '\n== %s\n' "$*" >&2; }

# --- lab helpers -------------------------------------------------------------------------

wait_ready() { # NAMESPACE POD
  k -n "$1" wait --for=condition=Ready "pod/$2" --timeout="${POD_TIMEOUT}" >/dev/null
}

run_web() { # the cards' `kubectl run web --image=nginx --labels="app=web" --expose --port=80`
  k run web --namespace=default --image=nginx --labels="app=web" --expose --port=80 >/dev/null
  wait_ready default web
}

new_namespace() { # NAME [KEY=VALUE...]: `kubectl create namespace` + `kubectl label namespace/`
  local name=$1
  shift
  k create namespace "${name}" >/dev/null
  CREATED_NS+=("${name}")
  if [[ $# -gt 0 ]]; then
    k label "namespace/${name}" "$@" >/dev/null
  fi
}

apply_policy() { # FILE of deploy/recipes/: the cards' `kubectl apply -f FILE.yaml`
  k apply --namespace=default -f "${RECIPE_DIR}/$1" >/dev/null
  sleep "${SETTLE_SECONDS}"
}

reset_lab() {
  k delete networkpolicy --all --namespace=default --ignore-not-found >/dev/null
  k delete pod,service web apiserver db --namespace=default --ignore-not-found >/dev/null
  local pods leftovers
  pods=$(k get pods --namespace=default -o name)
  leftovers=$(grep '^pod/test-' <<<"${pods}" || true)
  if [[ -n ${leftovers} ]]; then
    # shellcheck disable=SC2086 # one argument per pod name
    k delete --namespace=default ${leftovers} --ignore-not-found >/dev/null
  fi
  if [[ ${#CREATED_NS[@]} -gt 0 ]]; then
    k delete namespace "${CREATED_NS[@]}" --ignore-not-found >/dev/null
    CREATED_NS=()
  fi
}

# --- probes ------------------------------------------------------------------------------

# verdict CHECK EXIT_STATUS OUTPUT -> allowed | blocked | error
#   http    wget -qO-: exit 0 is allowed, "download timed out" is blocked
#   egress  the same, and a DNS lookup that fails ("bad address") is blocked too: the egress
#           cards block DNS along with everything else
#   dns     wget without -q prints "Connecting to HOST (IP:PORT)" once the name resolved
#   tcp     nc -v prints "HOST (IP:PORT) open" once connected, "timed out" otherwise
# Anything else (image pull failure, refused connection, kubectl error) is an error: it says
# nothing about the policy.
verdict() {
  local check=$1 rc=$2 out=$3
  case ${check} in
    http | egress)
      if [[ ${rc} -eq 0 ]]; then
        echo allowed
      elif grep -q 'download timed out' <<<"${out}"; then
        echo blocked
      elif [[ ${check} == egress ]] && grep -q 'bad address' <<<"${out}"; then
        echo blocked
      else
        echo error
      fi
      ;;
    dns)
      if grep -q 'Connecting to ' <<<"${out}"; then
        echo allowed
      elif grep -q 'bad address' <<<"${out}"; then
        echo blocked
      else
        echo error
      fi
      ;;
    tcp)
      if grep -q ' open' <<<"${out}"; then
        echo allowed
      elif grep -q 'timed out' <<<"${out}"; then
        echo blocked
      else
        echo error
      fi
      ;;
    *)
      echo "run-recipes: unknown check ${check}" >&2
      exit 2
      ;;
  esac
}

record() { # WHAT CHECK EXPECTED EXIT_STATUS OUTPUT
  local what=$1 check=$2 expected=$3 rc=$4 out=$5 observed result
  observed=$(verdict "${check}" "${rc}" "${out}")
  if [[ ${observed} == "${expected}" ]]; then
    result=ok
  else
    result=MISMATCH
    MISMATCHES=$((MISMATCHES + 1))
  fi
  ROWS+=("${CURRENT}|${what} [${check}]|${expected}|${observed}|${result}")
  printf '%-4s %-80s expected %-7s observed %-7s %s\n' \
    "${CURRENT}" "${what} [${check}]" "${expected}" "${observed}" "${result}"
  if [[ ${result} != ok ]]; then
    printf '       | %s\n' "${out//$'\n'/$'\n       | '}"
  fi
}

# probe NAMESPACE LABELS "CHECK:EXPECTED..." COMMAND...
# One fresh client pod, as `kubectl run test-$RANDOM [--namespace=NS] [--labels=L] --image=alpine`,
# whose output is judged by each CHECK (one table row per CHECK).
probe() {
  local ns=$1 labels=$2 expectations=$3
  shift 3
  local -a run=(run "test-${RANDOM}" --namespace="${ns}" --rm -i --restart=Never
    --image="${CLIENT_IMAGE}" --pod-running-timeout="${POD_TIMEOUT}")
  if [[ -n ${labels} ]]; then
    run+=(--labels="${labels}")
  fi
  local out rc=0
  out=$(k "${run[@]}" -- "$@" </dev/null 2>&1) || rc=$?
  local what="${ns}${labels:+ (${labels})}: $*" pair
  for pair in ${expectations}; do
    record "${what}" "${pair%%:*}" "${pair#*:}" "${rc}" "${out}"
  done
}

# external_probe EXPECTED: a client outside the cluster (a container on kind's Docker network)
# to the web Service's NodePort on the node that runs web (externalTrafficPolicy Local, so
# the source address is the client's own, not SNATed to a node).
external_probe() {
  local expected=$1 node node_ip port out rc=0
  node=$(k get pod web --namespace=default -o jsonpath='{.spec.nodeName}')
  node_ip=$(k get node "${node}" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
  port=$(k get service web --namespace=default -o jsonpath='{.spec.ports[0].nodePort}')
  out=$(docker run --rm --network "${KIND_NETWORK}" "${CLIENT_IMAGE}" \
    wget -qO- --timeout=2 "http://${node_ip}:${port}" 2>&1) || rc=$?
  record "external client -> NodePort ${node_ip}:${port} (derived)" http "${expected}" "${rc}" "${out}"
}

# --- the recipes -------------------------------------------------------------------------

recipe_01() { # DENY all traffic to an application
  run_web
  probe default "" "http:allowed" wget -qO- --timeout=2 http://web
  apply_policy 01-web-deny-all.yaml
  probe default "" "http:blocked" wget -qO- --timeout=2 http://web
}

recipe_02() { # LIMIT traffic to an application
  k run apiserver --namespace=default --image=nginx --labels="app=bookstore,role=api" --expose --port=80 >/dev/null
  wait_ready default apiserver
  apply_policy 02-api-allow.yaml
  probe default "" "http:blocked" wget -qO- --timeout=2 http://apiserver
  probe default "app=bookstore,role=frontend" "http:allowed" wget -qO- --timeout=2 http://apiserver
}

recipe_02a() { # ALLOW all traffic to an application (and it voids web-deny-all)
  run_web
  apply_policy 02a-web-allow-all.yaml
  apply_policy 01-web-deny-all.yaml
  probe default "" "http:allowed" wget -qO- --timeout=2 http://web
}

policy_default_deny_all() { # recipe 03's manifest, also used by 08
  apply_policy 03-default-deny-all.yaml
}

recipe_03() { # DENY all non-whitelisted traffic to a namespace (the card has no probe)
  run_web
  new_namespace foo
  probe default "" "http:allowed" wget -qO- --timeout=2 http://web.default
  policy_default_deny_all
  probe default "" "http:blocked" wget -qO- --timeout=2 http://web.default
  probe foo "" "http:blocked" wget -qO- --timeout=2 http://web.default
}

recipe_04() { # DENY all traffic from other namespaces
  run_web
  apply_policy 04-deny-from-other-namespaces.yaml
  new_namespace foo
  probe foo "" "http:blocked" wget -qO- --timeout=2 http://web.default
  probe default "" "http:allowed" wget -qO- --timeout=2 http://web.default
}

recipe_05() { # ALLOW traffic to an application from all namespaces: seed card NP-05
  run_web
  apply_policy 05-web-allow-all-namespaces.yaml
  new_namespace secondary
  probe secondary "" "http:allowed" wget -qO- --timeout=2 http://web.default
  probe default "" "http:allowed" wget -qO- --timeout=2 http://web.default
}

recipe_06() { # ALLOW all traffic from a namespace
  run_web
  new_namespace dev purpose=testing
  new_namespace prod purpose=production
  apply_policy 06-web-allow-prod.yaml
  probe dev "" "http:blocked" wget -qO- --timeout=2 http://web.default
  probe prod "" "http:allowed" wget -qO- --timeout=2 http://web.default
}

recipe_07() { # ALLOW traffic from some pods in another namespace: seed card NP-07
  run_web
  new_namespace other team=operations
  apply_policy 07-web-allow-all-ns-monitoring.yaml
  probe default "" "http:blocked" wget -qO- --timeout=2 http://web.default
  probe default "type=monitoring" "http:blocked" wget -qO- --timeout=2 http://web.default
  probe other "" "http:blocked" wget -qO- --timeout=2 http://web.default
  probe other "type=monitoring" "http:allowed" wget -qO- --timeout=2 http://web.default
}

recipe_08() { # ALLOW traffic from external clients (NodePort instead of LoadBalancer)
  k run web --namespace=default --image=nginx --labels="app=web" --port=80 >/dev/null
  wait_ready default web
  k expose pod/web --namespace=default --type=NodePort >/dev/null
  k patch service web --namespace=default -p '{"spec":{"externalTrafficPolicy":"Local"}}' >/dev/null
  new_namespace foo
  external_probe allowed
  # The card's use case: a namespace that denies all non-whitelisted traffic (recipe 03).
  policy_default_deny_all
  external_probe blocked
  apply_policy 08-web-allow-external.yaml
  external_probe allowed
  probe foo "" "http:allowed" wget -qO- --timeout=2 http://web.default
}

recipe_09() { # ALLOW traffic only to a port of an application
  k run apiserver --namespace=default --image=ahmet/app-on-two-ports --labels="app=apiserver" >/dev/null
  k create service clusterip apiserver --namespace=default --tcp 8001:8000 --tcp 5001:5000 >/dev/null
  wait_ready default apiserver
  apply_policy 09-api-allow-5000.yaml
  probe default "" "http:blocked" wget -qO- --timeout=2 http://apiserver:8001
  probe default "" "http:blocked" wget -qO- --timeout=2 http://apiserver:5001/metrics
  probe default "role=monitoring" "http:blocked" wget -qO- --timeout=2 http://apiserver:8001
  probe default "role=monitoring" "http:allowed" wget -qO- --timeout=2 http://apiserver:5001/metrics
}

recipe_10() { # ALLOW traffic from apps using multiple selectors
  k run db --namespace=default --image=redis:4 --labels="app=bookstore,role=db" --expose --port=6379 >/dev/null
  wait_ready default db
  apply_policy 10-redis-allow-services.yaml
  probe default "app=inventory,role=web" "tcp:allowed" nc -v -w 2 db 6379
  probe default "app=other" "tcp:blocked" nc -v -w 2 db 6379
}

recipe_11() { # DENY egress traffic from an application
  run_web
  apply_policy 11-foo-deny-egress.yaml
  probe default "app=foo" "egress:blocked dns:blocked" wget -qO- --timeout 1 http://web:80/
  probe default "app=foo" "egress:blocked" wget -qO- --timeout 1 http://www.example.com/
  probe default "" "http:allowed" wget -qO- --timeout=2 http://web # (derived) not app=foo
  # The card's second version: DNS to kube-dns allowed, everything else still denied.
  apply_policy 11b-foo-deny-egress.yaml
  probe default "app=foo" "dns:allowed http:blocked" wget --timeout 1 -O- http://web
  probe default "app=foo" "egress:blocked" wget --timeout 1 -O- http://www.example.com
}

recipe_12() { # DENY all non-whitelisted traffic from a namespace (the card has no probe)
  run_web
  new_namespace foo
  apply_policy 12-default-deny-all-egress.yaml
  probe default "" "egress:blocked" wget -qO- --timeout=2 http://web.default
  probe foo "" "http:allowed" wget -qO- --timeout=2 http://web.default
}

recipe_14() { # DENY external egress traffic
  apply_policy 14-foo-deny-external-egress.yaml
  run_web
  # The card reports this one as connected, but its policy admits only DNS to kube-dns: by
  # the NetworkPolicy API the connection to web (a pod, port 80) is denied. Expect that.
  probe default "app=foo" "dns:allowed http:blocked" wget -O- --timeout 1 http://web:80
  probe default "app=foo" "egress:blocked" wget -O- --timeout 1 http://www.example.com
}

# --- main --------------------------------------------------------------------------------

main() {
  local -a selected=("$@")
  if [[ ${#selected[@]} -eq 0 ]]; then
    selected=("${RECIPES[@]}")
  fi
  local id
  for id in "${selected[@]}"; do
    declare -F "recipe_${id}" >/dev/null || { echo "run-recipes: no recipe ${id} (have: ${RECIPES[*]})" >&2; exit 2; }
  done

  # docker: recipe 08's external client is a container on kind's Docker network.
  for tool in kubectl docker; do
    command -v "${tool}" >/dev/null || { echo "run-recipes: ${tool} is required" >&2; exit 2; }
  done
  k -n npenforce-system rollout status daemonset/npenforce --timeout=60s >/dev/null ||
    { echo "run-recipes: npenforce is not running in ${CONTEXT}: run deploy/kind/create-cluster.sh" >&2; exit 2; }

  trap 'reset_lab >/dev/null 2>&1 || true' EXIT
  trap 'exit 130' INT TERM

  reset_lab
  for id in "${selected[@]}"; do
    CURRENT=${id}
    log "recipe ${id}"
    "recipe_${id}"
    reset_lab
  done

  printf '\n%-4s | %-80s | %-8s | %-8s | %s\n' recipe probe expected observed result
  local row what expected observed result
  for row in "${ROWS[@]}"; do
    IFS='|' read -r id what expected observed result <<<"${row}"
    printf '%-4s | %-80s | %-8s | %-8s | %s\n' "${id}" "${what}" "${expected}" "${observed}" "${result}"
  done
  printf '\n%d probes, %d mismatches\n' "${#ROWS[@]}" "${MISMATCHES}"
  [[ ${MISMATCHES} -eq 0 ]]
}

main "$@"
