#!/usr/bin/env bash
# Installs the system packages the test suite needs (Debian 12, run as root):
# containerd (with ctr), runc, busybox-static (the test image's only binary),
# containernetworking-plugins (CNI, /usr/lib/cni), socat (a PTY pair is the serial line
# of the Modbus RTU tests), mosquitto with its clients (the eventbus's MQTT broker), and
# systemd (systemd-analyze checks the unit files; systemd need not be running).
# Starts no service; safe to run again.
# The tests start their own containerd and mosquitto on their own sockets and ports, so the
# distribution's services are stopped and disabled if they happen to be running.
set -euo pipefail

PACKAGES=(containerd runc busybox-static containernetworking-plugins socat mosquitto
          mosquitto-clients systemd)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-system-deps.sh: must run as root" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive

missing=()
for pkg in "${PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
  if [ "$status" != "installed" ]; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  # Keep maintainer scripts from starting services (invoke-rc.d and deb-systemd-invoke
  # both honour policy-rc.d). Only a policy file we create ourselves is removed again.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# temporary: written by moorage install-system-deps.sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    created_policy=1
  fi
  cleanup() {
    if [ "$created_policy" -eq 1 ]; then
      rm -f "$policy"
    fi
  }
  trap cleanup EXIT
  echo "installing: ${missing[*]}"
  # Wait for another apt/dpkg run (e.g. a parallel provisioning step) instead of failing.
  apt_opts=(-o DPkg::Lock::Timeout=600)
  apt-get "${apt_opts[@]}" update -qq
  apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  cleanup
  created_policy=0
  trap - EXIT
fi

# The distribution's services: stop and disable them only if they run.
# systemctl may be absent, or present without systemd as PID 1 (containers): then
# is-active fails and nothing is done.
for service in containerd mosquitto; do
  if command -v systemctl >/dev/null 2>&1 \
      && systemctl is-active --quiet "$service.service" 2>/dev/null; then
    echo "stopping and disabling the system $service.service (tests run their own)"
    systemctl stop "$service.service" || true
    systemctl disable "$service.service" >/dev/null 2>&1 || true
  elif [ -x "/etc/init.d/$service" ] && command -v service >/dev/null 2>&1 \
      && service "$service" status >/dev/null 2>&1; then
    echo "stopping the system $service service (tests run their own)"
    service "$service" stop || true
    if command -v update-rc.d >/dev/null 2>&1; then
      update-rc.d "$service" disable >/dev/null 2>&1 || true
    fi
  fi
done

for bin in containerd ctr runc containerd-shim-runc-v2 socat mosquitto mosquitto_pub \
    mosquitto_sub; do
  command -v "$bin" >/dev/null 2>&1 || { echo "missing after install: $bin" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "missing after install: /bin/busybox" >&2; exit 1; }
[ -x /usr/lib/cni/bridge ] || { echo "missing after install: /usr/lib/cni/bridge" >&2; exit 1; }
echo "system deps ok: $(containerd --version | awk '{print $1, $3}'), $(runc --version | head -1)," \
  "$(mosquitto -h 2>/dev/null | head -1)"
