#!/usr/bin/env bash
# Brings up a whole local system: a cloud, an edge node enrolled with `moorage join`, a
# simulated Modbus thermometer with its mapper, and a Device whose live values stream to the
# cloud; a pod too when containerd runs here.
#   scripts/demo.sh          run, and keep running until Ctrl-C
#   scripts/demo.sh --exit   stop everything once a device value reached the cloud (CI)
# Ports and data dir can be moved with DEMO_DIR, DEMO_HUB_PORT, DEMO_CERT_PORT,
# DEMO_ADMIN_PORT, DEMO_MODBUS_PORT, DEMO_METRICS_PORT.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
step() { printf '\n==> %s\n' "$*"; }
step "Preparing the virtualenv (.venv)"
source "$ROOT/scripts/bootstrap.sh"

DIR="${DEMO_DIR:-$ROOT/demo-data}"
HUB="${DEMO_HUB_PORT:-10000}"; CERT="${DEMO_CERT_PORT:-10002}"; ADMIN="${DEMO_ADMIN_PORT:-6443}"
MODBUS="${DEMO_MODBUS_PORT:-5020}"; METRICS="${DEMO_METRICS_PORT:-9091}"
EXIT_WHEN_READY=0; [ "${1:-}" = "--exit" ] && EXIT_WHEN_READY=1
rm -rf "$DIR"; mkdir -p "$DIR"
export MOORAGE_KUBECONFIG="$DIR/cloud/admin.kubeconfig"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

step "moorage init: CA, certificates and cloudcore.yaml in $DIR/cloud"
moorage init --data-dir "$DIR/cloud" --advertise-address 127.0.0.1 --bind-address 127.0.0.1 \
  --websocket-port "$HUB" --https-port "$CERT" --admin-port "$ADMIN"

python - "$DIR/cloud/cloudcore.yaml" "$METRICS" <<'PY'
import sys, yaml
path, port = sys.argv[1], int(sys.argv[2])
cfg = yaml.safe_load(open(path))
cfg["modules"]["metrics"] = {"enable": True, "port": port}
open(path, "w").write(yaml.safe_dump(cfg, sort_keys=False))
PY

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

step "Starting a simulated Modbus thermometer on 127.0.0.1:$MODBUS (log: $DIR/thermometer.log)"
python -m mappers.modbus.simulator --port "$MODBUS" >"$DIR/thermometer.log" 2>&1 & pids+=($!)

step "Starting modbus-mapper (config: $DIR/modbus-mapper.yaml, log: $DIR/mapper.log)"
cat >"$DIR/modbus-mapper.yaml" <<YAML
name: modbus
protocol: modbus
edgecoreSock: $DIR/edge/dmi.sock
socket: $DIR/modbus.sock
offlineRetryMax: 5s
YAML
modbus-mapper --config "$DIR/modbus-mapper.yaml" >"$DIR/mapper.log" 2>&1 & pids+=($!)

step "moorage apply: a DeviceModel and a Device bound to demo-edge"
sed -e "s/nodeName: edge-1/nodeName: demo-edge/" \
    -e "s/ip: 192.0.2.20, port: 502/ip: 127.0.0.1, port: $MODBUS/" \
    "$ROOT/examples/modbus-thermometer.yaml" >"$DIR/thermometer.yaml"
moorage apply -f "$DIR/thermometer.yaml"

step "The device's live values at the cloud"
# True once all four properties have a value read from the device.
reported() { local json; json="$(moorage get device thermometer-1 -o json 2>/dev/null)" || return 1
  [ "$(grep -o '"reported"' <<<"$json" | wc -l)" -ge 4 ]; }
for _ in $(seq 150); do reported && break; sleep 0.2; done
moorage get devices
moorage describe device thermometer-1 | sed -n '/^State:/,$p'
reported || { echo "no device value reached the cloud; see $DIR/mapper.log and $DIR/edgecore.log"; exit 1; }
echo "A device value reached the cloud."

step "A pod on demo-edge"
if [ -S /run/containerd/containerd.sock ]; then
  cat >"$DIR/pod.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata: {name: hello, namespace: default}
spec:
  nodeName: demo-edge
  containers:
    - {name: hello, image: "${DEMO_POD_IMAGE:-busybox:latest}", command: [sleep, "3600"]}
YAML
  moorage apply -f "$DIR/pod.yaml"
  for _ in $(seq 60); do moorage get pods hello 2>/dev/null | grep -q Running && break; sleep 0.5; done
  moorage get pods -o wide
  moorage get pods hello | grep -q Running || echo "The pod is not Running (yet): the image" \
    "${DEMO_POD_IMAGE:-busybox:latest} must be in containerd's k8s.io namespace (no registry" \
    "is contacted here); see moorage describe pod hello."
else
  echo "containerd is not running here (/run/containerd/containerd.sock is missing): no pod in" \
       "this demo. Install and start containerd (scripts/install-system-deps.sh installs it) to" \
       "see one run on demo-edge."
fi

if [ "$EXIT_WHEN_READY" = 1 ]; then
  step "Demo done: demo-edge is Ready and its device reports to the cloud. Stopping."
  exit 0
fi
cat <<MSG

Everything is running. Look around with:
  export MOORAGE_KUBECONFIG=$MOORAGE_KUBECONFIG
  moorage get nodes -o wide
  moorage get devices
  moorage describe device thermometer-1        # values, read times, desired vs observed
  moorage get device thermometer-1 -o yaml
  kubectl --kubeconfig \$MOORAGE_KUBECONFIG get --raw /api/v1/nodes/demo-edge/proxy/healthz
  curl -s http://127.0.0.1:$METRICS/metrics | grep -E '^(connected_nodes|cloudcore_)'
Set a new temperature setpoint: edit $DIR/thermometer.yaml (desired value) and run
  moorage apply -f $DIR/thermometer.yaml
Logs: $DIR/cloudcore.log, $DIR/edgecore.log, $DIR/mapper.log, $DIR/thermometer.log.
Press Ctrl-C to stop everything.
MSG
wait
