#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs the system programs the tests talk to, if they are missing:
#   mosquitto (MQTT broker), PostgreSQL server, Chromium (live page tests).
# The tests start their own instances on loopback; nothing here starts a service.
set -euo pipefail

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "tests need: ${need[*]} (install them with your package manager, e.g. sudo apt-get install ${need[*]})" >&2
  exit 1
fi
echo "installing test services: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts the packaged services on install; the tests run their own on other ports.
for svc in mosquitto postgresql; do
  (command -v service >/dev/null && service "$svc" stop >/dev/null 2>&1) || true
done
