#!/usr/bin/env bash
# The whole job end to end on the embedded defaults, on one machine:
#   installs the project, starts its own redis-server on a free port (stopped at the end, its
#   data gone with it), starts the local GitHub stand-in with sample users, then runs
#   `bulkbackup ingest`, `bulkbackup run --procs 4` and `bulkbackup stats` into the local store
#   ./backup/github.com, shows what is there, and restores one repository from its bundle.
# REDIS_URL set explicitly: that Redis is used instead (it must not hold a real `tracked` set;
# the demo's keys stay there). BULKBACKUP_STORE is honoured; PYTHON chooses the interpreter
# (default python3); BULKBACKUP_DEMO_SKIP_INSTALL=1 skips the pip step.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STORE=${BULKBACKUP_STORE:-./backup/github.com}
bulkbackup() { "$PYTHON" -m bulkbackup "$@"; }
work=$(mktemp -d -t bulkbackup-demo-XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

if [ "${BULKBACKUP_DEMO_SKIP_INSTALL:-}" != 1 ]; then
    echo "== installing bulkbackup"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[standin,serve]' 2>&1 | grep -v "as the 'root' user" || true
fi

ping_redis() { "$PYTHON" -c "import redis,sys; redis.Redis.from_url(sys.argv[1], socket_timeout=2).ping()" "$REDIS_URL" 2>/dev/null; }
if [ -z "${REDIS_URL:-}" ]; then
    command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server), or set REDIS_URL"; exit 1; }
    port=$("$PYTHON" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
    export REDIS_URL="redis://127.0.0.1:$port/0"
    echo "== starting the demo's own redis-server on port $port"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
    pids+=($!)
    for _ in $(seq 100); do ping_redis && break; sleep 0.1; done
fi
ping_redis || { echo "no Redis answers at $REDIS_URL"; exit 1; }
# The demo must not drain somebody's real queue against the stand-in.
if "$PYTHON" - "$REDIS_URL" <<'PY'
import redis, sys
r = redis.Redis.from_url(sys.argv[1])
sys.exit(0 if r.zcard("tracked") and not r.exists("bulkbackup:demo") else 1)
PY
then
    echo "REDIS_URL=$REDIS_URL already holds a 'tracked' set: point REDIS_URL to a scratch database"
    exit 1
fi
"$PYTHON" -c "import redis,sys; redis.Redis.from_url(sys.argv[1]).set('bulkbackup:demo', 1)" "$REDIS_URL"

echo "== starting the local GitHub stand-in"
"$PYTHON" -m bulkbackup.testing.forge --root "$work/forge" --port 0 --sample >"$work/forge.out" 2>"$work/forge.err" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/forge.out" ] && break; sleep 0.1; done
export GITHUB_API_URL=$(head -n1 "$work/forge.out")
echo "   $GITHUB_API_URL"

cat >"$work/users.json" <<'JSON'
{"login": "octocat", "id": 583231}
{"login": "torvalds-demo", "id": 1024025}
{"actor": {"login": "ghost-user"}}
{"login": "not a login"}
JSON

echo "== bulkbackup ingest"
bulkbackup ingest "$work/users.json"
echo "== bulkbackup run --procs 4"
bulkbackup run --procs 4 --no-stats
echo "== bulkbackup stats"
bulkbackup stats
echo "== bulkbackup show octocat"
bulkbackup show octocat

echo "== the archives"
find "$STORE" -maxdepth 2 -type f ! -name '*%*' | sort | head -20
bundle=$(find "$STORE/octocat" -name '*.bundle' -size +0 | sort | head -n1)
echo "== restoring $bundle with git clone"
git clone --quiet "$bundle" "$work/restored"
git -C "$work/restored" log --oneline -3
ls "$work/restored"
echo "== done: archives are in $STORE"
echo "== look at it in a browser (a Redis started by this demo stops with it; \`bulkbackup rebuild\` refills another):"
echo "   REDIS_URL=$REDIS_URL BULKBACKUP_STORE=$STORE bulkbackup serve   # then open http://127.0.0.1:8000/"
