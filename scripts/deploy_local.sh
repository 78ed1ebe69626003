#!/usr/bin/env bash
# A deployment across "hospitals" on one machine, over loopback, with TLS and node authentication:
# the shared federation and the pool, credentials for every site, a SuperLink, one SuperNode per site
# (each reading only its own file), then the run; everything stops when the run ends.
#
#   scripts/deploy_local.sh [--config FILE] [--out DIR] [--port PORT] [--set section.key=value ...]
#
# Defaults: the synthetic demo federation, runs/deploy-local, port 8000. --set goes to `deploy prepare`
# (e.g. --set method.stages=1). DIR must not exist yet. Logs: DIR/logs/; the run: DIR/run/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
export PATH="$(dirname "$PY"):$PATH" FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1

CONFIG="" OUT="runs/deploy-local" PORT=8000 SETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --set) SETS+=(--set "$2"); shift 2 ;;
    *) echo "unknown argument: $1 (see the top of $0)" >&2; exit 2 ;;
  esac
done
[ -n "$CONFIG" ] || CONFIG=$("$PY" -c 'from meduniverse.interfaces.cli import demo_config_path; print(demo_config_path())')
[ -e "$OUT" ] && { echo "error: $OUT already exists; choose a new --out" >&2; exit 1; }
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
mkdir -p "$OUT/logs"
DEPLOY=("$PY" -m meduniverse.deploy)   # the same as `meduniverse deploy`
LINK=127.0.0.1:$PORT

PIDS=()
cleanup() {  # sites first (they leave the federation cleanly), then the server
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[i]}" 2>/dev/null || true; sleep 1; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "== 1. the shared federation (no data paths), the server's pool, each site's own file"
"${DEPLOY[@]}" prepare "$CONFIG" --out "$OUT/deployment" "${SETS[@]}"
SITES=$("$PY" -c 'import sys, tomllib; print(" ".join(s["name"] for s in tomllib.load(open(sys.argv[1], "rb"))["sites"]))' \
        "$OUT/deployment/federation.toml")

echo "== 2. credentials: a CA, the SuperLink's TLS certificate, a key pair and a TLS certificate per site"
SITE_ARGS=(); for s in $SITES; do SITE_ARGS+=(--site "$s"); done
"${DEPLOY[@]}" credentials --out "$OUT/credentials" "${SITE_ARGS[@]}"

echo "== 3. the server: SuperLink with TLS and node authentication (log: $OUT/logs/superlink.log)"
FLWR_HOME="$OUT/server-home" "${DEPLOY[@]}" superlink --credentials "$OUT/credentials/server" \
  --state "$OUT/server/superlink.db" --port "$PORT" > "$OUT/logs/superlink.log" 2>&1 &
PIDS+=($!)

echo "== 4. register the sites' public keys: only they can join"
"${DEPLOY[@]}" register --credentials "$OUT/credentials/server" --superlink "$LINK" --flwr-home "$OUT/operator"

echo "== 5. one SuperNode per site, each on its own data (logs: $OUT/logs/SITE.log)"
i=0
for s in $SITES; do
  i=$((i + 1))
  "${DEPLOY[@]}" node --site "$s" --data "$OUT/deployment/sites/$s.npz" --credentials "$OUT/credentials/sites/$s" \
    --superlink "$LINK" --port $((PORT + 100 + i)) --flwr-home "$OUT/node-$s" > "$OUT/logs/$s.log" 2>&1 &
  PIDS+=($!)
done

echo "== 6. the run (flwr run), waiting for it to finish"
"${DEPLOY[@]}" run "$OUT/deployment/federation.toml" --out "$OUT/run" --superlink "$LINK" \
  --ca "$OUT/credentials/ca.crt" --flwr-home "$OUT/operator"
