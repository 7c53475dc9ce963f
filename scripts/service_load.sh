#!/usr/bin/env bash
# Load on examples/tokio_service with a real load generator, on loopback only.
#
#   bash scripts/service_load.sh            # the full run: 20 s per scenario, ~3 min
#   bash scripts/service_load.sh --quick    # 2 s per scenario (what CI runs)
#
# Needs oha (`cargo install oha --locked`, a few minutes to build), curl and python3.
# Every load run is bounded in time (oha -z, and a timeout around each process).
#
# Scenarios, each against a fresh service with 2 workers:
#  1. 8 clients that ignore Retry-After on /primes?below=200000, with /health paced at
#     50 requests/s beside them, for three admission settings: an unbounded queue, the
#     example's default (a bounded queue with a 250 ms wait for room), and an immediate
#     503 once 4 jobs are in (the old example's behaviour). Successful /primes per second,
#     and /health's p99.
#  2. 64 clients on /primes: no status but 200, 503 or 504, and the service's memory
#     (its own and its workers' resident sets, sampled every 100 ms) stays bounded.
#  3. SIGTERM with 4 long jobs in flight and a 2 s drain deadline: exit code and time.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=20
if [ "${1:-}" = "--quick" ]; then
    secs=2
fi
command -v oha >/dev/null || { echo "oha is not installed: cargo install oha --locked" >&2; exit 2; }

cargo build --release --quiet --example tokio_service
bin=target/release/examples/tokio_service
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# Starts the service with the given flags; sets $pid and $addr.
start() {
    # A background job of a script inherits SIGINT ignored: give it back its default.
    RUST_LOG=warn timeout 600 env --default-signal=INT "$bin" --addr 127.0.0.1:0 --workers 2 "$@" \
        > "$work/out" 2> "$work/err" &
    pid=$!
    for _ in $(seq 1 500); do
        addr=$(sed -n 's|^listening on http://||p' "$work/out" | head -n 1)
        [ -n "$addr" ] && return 0
        sleep 0.01
    done
    echo "the service did not start" >&2
    cat "$work/err" >&2
    exit 1
}

stop() {
    kill -TERM "$pid"
    wait "$pid" || true
}

# oha's JSON summary of one run: oha_json OUT ARGS...
oha_json() {
    local out=$1
    shift
    timeout $((secs + 60)) oha --no-tui --output-format json -z "${secs}s" "$@" > "$out"
}

# statuses FILE: "200:123 503:4 ..."
statuses() {
    python3 - "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(" ".join(f"{k}:{v}" for k, v in sorted(d.get("statusCodeDistribution", {}).items())))
EOF
}

# ok_per_second FILE: 200 answers per second of the run.
ok_per_second() {
    python3 - "$1" "$secs" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f'{d.get("statusCodeDistribution", {}).get("200", 0) / float(sys.argv[2]):.1f}')
EOF
}

# p99_ms FILE: the 99th percentile latency, in ms.
p99_ms() {
    python3 - "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
p = d["latencyPercentiles"]
print(f'{(p.get("p99") or 0) * 1000:.2f}')
EOF
}

echo "== 1. 8 clients ignoring Retry-After on /primes?below=200000, /health paced at 50/s (${secs} s each)"
printf '%-44s %12s %14s  %s\n' "admission" "200s per s" "health p99 ms" "statuses"
for setting in "unbounded queue:--max-queued 1000000" \
               "bounded queue, 250 ms wait (default):--max-queued 4 --admission-wait-ms 250" \
               "immediate 503 past 4 jobs:--max-queued 2 --admission-wait-ms 0"; do
    name=${setting%%:*}
    # shellcheck disable=SC2086 # the flags are words
    start ${setting#*:}
    oha_json "$work/health.json" -c 1 -q 50 "http://$addr/health" &
    health_job=$!
    oha_json "$work/primes.json" -c 8 "http://$addr/primes?below=200000"
    wait "$health_job"
    printf '%-44s %12s %14s  %s\n' "$name" "$(ok_per_second "$work/primes.json")" \
        "$(p99_ms "$work/health.json")" "$(statuses "$work/primes.json")"
    stop
done

echo
echo "== 2. 64 clients on /primes?below=200000 (${secs} s): statuses and memory"
start
service=$(pgrep -P "$pid" | head -n 1) # $pid is `timeout`; the service is its child
(
    while kill -0 "$service" 2>/dev/null; do
        rss=$(ps -o rss= -p "$service" --ppid "$service" 2>/dev/null | awk '{s+=$1} END {print s+0}')
        echo "$rss"
        sleep 0.1
    done
) > "$work/rss" &
rss_job=$!
oha_json "$work/64.json" -c 64 "http://$addr/primes?below=200000"
echo "statuses: $(statuses "$work/64.json")"
echo "resident memory, service and its $(pgrep -c -P "$service") workers: max $(sort -n "$work/rss" | tail -n 1) KiB over $(wc -l < "$work/rss") samples"
stop
wait "$rss_job" 2>/dev/null || true
bad=$(python3 - "$work/64.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(" ".join(k for k in d.get("statusCodeDistribution", {}) if k not in ("200", "503", "504")))
EOF
)
if [ -n "$bad" ]; then
    echo "statuses other than 200, 503 and 504: $bad" >&2
    exit 1
fi

echo
echo "== 3. SIGTERM with 4 long jobs in flight, drain deadline 2 s"
start --drain-timeout-ms 2000 --max-queued 2
for _ in 1 2 3 4; do
    timeout 60 curl -s -o /dev/null -w '%{http_code}\n' "http://$addr/primes?below=50000000" >> "$work/codes" &
done
for _ in $(seq 1 500); do
    running=$(curl -s "http://$addr/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pool"]["jobs_running"])')
    [ "$running" = 2 ] && break
    sleep 0.01
done
t0=$(date +%s.%N)
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
t1=$(date +%s.%N)
wait
took=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
echo "exit status $status after ${took} s; the requests got: $(sort "$work/codes" | uniq -c | awk '{printf "%s x%s ", $2, $1}')"
tail -n 1 "$work/out"
[ "$status" = 0 ] || { echo "the service did not exit 0" >&2; exit 1; }
python3 -c "import sys; sys.exit(0 if $took <= 3.0 else 1)" || { echo "exit took longer than the drain deadline + 1 s" >&2; exit 1; }
