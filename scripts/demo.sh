#!/usr/bin/env bash
# Brings up a local cloud and one enrolled edge node, and shows the node Ready.
#   scripts/demo.sh          run, and keep running until Ctrl-C
#   scripts/demo.sh --exit   stop everything once the node is Ready (CI uses this)
# Ports and data dir can be moved with DEMO_DIR, DEMO_HUB_PORT, DEMO_CERT_PORT, DEMO_ADMIN_PORT.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
step() { printf '\n==> %s\n' "$*"; }
step "Preparing the virtualenv (.venv)"
source "$ROOT/scripts/bootstrap.sh"

DIR="${DEMO_DIR:-$ROOT/demo-data}"
HUB="${DEMO_HUB_PORT:-10000}"; CERT="${DEMO_CERT_PORT:-10002}"; ADMIN="${DEMO_ADMIN_PORT:-6443}"
EXIT_WHEN_READY=0; [ "${1:-}" = "--exit" ] && EXIT_WHEN_READY=1
rm -rf "$DIR"; mkdir -p "$DIR"
export MOORAGE_KUBECONFIG="$DIR/cloud/admin.kubeconfig"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

step "moorage init: CA, certificates and cloudcore.yaml in $DIR/cloud"
moorage init --data-dir "$DIR/cloud" --advertise-address 127.0.0.1 --bind-address 127.0.0.1 \
  --websocket-port "$HUB" --https-port "$CERT" --admin-port "$ADMIN"

step "Starting cloudcore (log: $DIR/cloudcore.log)"
cloudcore --config "$DIR/cloud/cloudcore.yaml" >"$DIR/cloudcore.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do moorage get nodes >/dev/null 2>&1 && break; sleep 0.1; done

step "moorage gettoken and moorage join: enrolling node demo-edge"
TOKEN="$(moorage gettoken --ttl 1h)"
moorage join --cloudcore-ipport "127.0.0.1:$HUB" --certport "$CERT" --token "$TOKEN" \
  --node-name demo-edge --data-dir "$DIR/edge"

step "Starting edgecore (log: $DIR/edgecore.log)"
edgecore --config "$DIR/edge/edgecore.yaml" >"$DIR/edgecore.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do moorage get nodes demo-edge 2>/dev/null | grep -q ' Ready ' && break; sleep 0.1; done

step "moorage get nodes"
moorage get nodes -o wide
moorage get nodes demo-edge | grep -q ' Ready ' || { echo "demo-edge did not become Ready"; exit 1; }

if [ "$EXIT_WHEN_READY" = 1 ]; then
  step "Demo done: demo-edge is Ready. Stopping."
  exit 0
fi
cat <<MSG

The cloud and one edge node are running. Look around with:
  export MOORAGE_KUBECONFIG=$MOORAGE_KUBECONFIG
  moorage get nodes -o yaml
  kubectl --kubeconfig \$MOORAGE_KUBECONFIG get --raw /api/v1/nodes/demo-edge/proxy/healthz
Logs: $DIR/cloudcore.log, $DIR/edgecore.log. Press Ctrl-C to stop everything.
MSG
wait
