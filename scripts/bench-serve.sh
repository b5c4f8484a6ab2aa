#!/usr/bin/env bash
# bench-serve.sh — fio (nbd engine) through `dst serve` over two `dst export`
# nodes (linear, stripe 64KiB, mirror) against fio straight to one node, on
# tmpfs files, interleaved per repetition; prints IOPS / MiB/s and the ratio
# to the direct node. It reports, it does not gate (exit 0 when it measured).
# Targets from the engine issue: linear and stripe >= 0.8x the direct node
# on 4k QD32 and 1 MiB QD8; mirror-2 writes >= 0.45x. The mirror also runs
# without its activity log (mirror-nolog; target: the log costs <= 10%,
# mirror >= 0.9x mirror-nolog) and with a log of 64 regions, smaller than
# the workload's 256 regions (mirror-log64: what a thrashing log costs).
# RATE_IOPS=N (default 10000; 0 turns it off) also runs every 4k workload at
# that fixed offered load and reports the CPU microseconds per I/O of the
# process fio talks to (user+sys from /proc/PID/stat over I/Os completed):
# at the same work for every layout it compares cost, not fio's ceiling.
#   REPS=2 RUNTIME=3 scripts/bench-serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-2}; RUNTIME=${RUNTIME:-3}; SIZE_MIB=${SIZE_MIB:-512}
for tool in fio python3; do command -v $tool >/dev/null || { echo "bench-serve: needs $tool (make deps)" >&2; exit 2; }; done
go build -o bin/dst ./cmd/dst
work=$(mktemp -d /dev/shm/dst-bench-serve.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
start() { # start NAME ARGS... ; sets $addr
  local name=$1; shift
  bin/dst "$@" >"$work/$name.out" 2>"$work/$name.log" & pids+=($!)
  for _ in $(seq 400); do
    addr=$(sed -n 's/^listening on //p' "$work/$name.out" | head -1); [ -n "$addr" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/$name.log" >&2; exit 1; }
    sleep 0.05
  done; echo "bench-serve: $name did not start" >&2; exit 1
}
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; pids=(); }
cputicks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
fiojob() { # fiojob URI RW BS QD [RATE] -> prints IOPS, MiB/s and the server's CPU us per I/O
  local rate=(--ramp_time=1) t0 t1 # a rated run counts every I/O it ran: no ramp
  [ -n "${5:-}" ] && rate=(--rate_iops="$5")
  t0=$(cputicks "$server")
  fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" --numjobs=1 --size=$((SIZE_MIB/2))M "${rate[@]}" \
      --time_based --runtime="$RUNTIME" --norandommap --output-format=json --output="$work/fio.json" >/dev/null 2>&1 ||
    { echo "bench-serve: fio failed against $1" >&2; exit 1; }
  t1=$(cputicks "$server")
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; s=j["read"] if j["read"]["io_bytes"] else j["write"]; n=s["total_ios"]; print(round(s["iops"]), round(s["bw"]/1024), round((int(sys.argv[3])-int(sys.argv[2]))*1e6/int(sys.argv[4])/max(n,1), 2))' "$work/fio.json" "$t0" "$t1" "$(getconf CLK_TCK)"
}
# setup LAYOUT: two fresh exports and (unless direct) a serve over them; sets $uri
setup() {
  stop_all; rm -f "$work"/*.img
  head -c ${SIZE_MIB}M /dev/zero >"$work/a.img"; cp "$work/a.img" "$work/b.img"
  start a export --listen 127.0.0.1:0 --file "$work/a.img"; local a=$addr
  if [ "$1" = direct ]; then uri="nbd://$a"; server=${pids[-1]}; return; fi
  start b export --listen 127.0.0.1:0 --file "$work/b.img"; local b=$addr
  local chunk="" layout=$1 extra=""
  [ "$1" = stripe ] && chunk="  chunk: 64KiB"
  case $1 in
    mirror-nolog) layout=mirror extra="activity_log: {regions: off}" ;;
    mirror-log64) layout=mirror extra="activity_log: {regions: 64}" ;;
  esac
  printf 'listen: 127.0.0.1:0\nadmin: off\nstorage:\n  layout: %s\n%s\n  members: [nbd://%s, nbd://%s]\n%s\n' "$layout" "$chunk" "$a" "$b" "$extra" >"$work/s.yaml"
  start serve serve --config "$work/s.yaml"; uri="nbd://$addr"; server=${pids[-1]}
}
workloads=${WORKLOADS:-"randread:4k:32 randwrite:4k:32 read:1m:8 write:1m:8"}
RATE_IOPS=${RATE_IOPS:-10000}
declare -A res cpu
for rep in $(seq "$REPS"); do
  for layout in ${LAYOUTS:-direct linear stripe mirror mirror-nolog mirror-log64}; do
    setup "$layout"
    for w in $workloads; do
      IFS=: read -r rw bs qd <<<"$w"
      read -r iops mibs _ < <(fiojob "$uri" "$rw" "$bs" "$qd")
      res[$layout,$w]+="$iops:$mibs "
      echo "bench-serve: rep $rep $layout $rw $bs QD$qd: $iops IOPS $mibs MiB/s" >&2
      if [ "$bs" = 4k ] && [ "$RATE_IOPS" != 0 ]; then
        read -r iops mibs us < <(fiojob "$uri" "$rw" "$bs" "$qd" "$RATE_IOPS")
        cpu[$layout,$w]+="$us "
        echo "bench-serve: rep $rep $layout $rw $bs QD$qd at $RATE_IOPS IOPS: $iops IOPS, server $us us CPU per I/O" >&2
      fi
    done
  done
done
stop_all
python3 - "$workloads" "$RATE_IOPS" <<PY
import sys, statistics
res, cpu = {}, {}
$(for k in "${!res[@]}"; do echo "res['$k'] = '${res[$k]}'"; done)
$(for k in "${!cpu[@]}"; do echo "cpu['$k'] = '${cpu[$k]}'"; done)
def med(k, i): return statistics.median(int(x.split(':')[i]) for x in res[k].split()) if k in res else 0
layouts = [l for l in ('linear','stripe','mirror','mirror-nolog','mirror-log64') if any(k.startswith(l+',') for k in res)]
print(f"{'workload':<16}{'direct':>10}" + ''.join(f"{l:>14}" for l in layouts) + "   ratios to direct; mirror to mirror-nolog")
for w in sys.argv[1].split():
    i = 0 if ':4k:' in w else 1
    d = med('direct,'+w, i)
    vals = [med(l+','+w, i) for l in layouts]
    unit = 'IOPS' if i == 0 else 'MiB/s'
    ratios = ', '.join(f"{v/d:.2f}x" if d else '-' for v in vals)
    m, n = med('mirror,'+w, i), med('mirror-nolog,'+w, i)
    log = f"; log {m/n:.2f}x" if n else ''
    print(f"{w+' '+unit:<16}{d:>10}" + ''.join(f"{v:>14}" for v in vals) + "   " + ratios + log)
if cpu:
    print(f"\nserver CPU us per I/O at {sys.argv[2]} IOPS offered, median (min-max)   ratios to direct; mirror to mirror-nolog")
    for w in sys.argv[1].split():
        if ':4k:' not in w: continue
        row = {}
        for l in ['direct'] + layouts:
            xs = [float(x) for x in cpu.get(l+','+w, '').split()]
            if xs: row[l] = (statistics.median(xs), min(xs), max(xs))
        cells = ''.join(f"  {l} {m:.1f} ({a:.1f}-{b:.1f})" for l, (m, a, b) in row.items())
        d = row.get('direct', (0,))[0]
        ratios = ', '.join(f"{row[l][0]/d:.2f}x" for l in layouts if l in row and d)
        log = f"; log {row['mirror'][0]/row['mirror-nolog'][0]:.2f}x" if 'mirror' in row and 'mirror-nolog' in row else ''
        print(f"{w:<16}{cells}   {ratios}{log}")
PY
