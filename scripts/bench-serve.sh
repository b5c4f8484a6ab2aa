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
# The proxy position (issue 17): linear1 is `dst serve` over one export,
# nbdkit-nbd is nbdkit's NBD proxy plugin in front of the same kind of
# export; each one's CPU per I/O is what the proxy adds (the export's own
# cost is the same under both), and the QD1 workload (randread:4k:1) gives
# the latency each adds over the export straight (p50/p99 of fio's total
# latency). Targets: serve adds <= 0.8x the CPU nbdkit nbd adds and no
# more QD1 latency; 1 MiB QD8 through serve >= 1.2x through nbdkit nbd.
#   REPS=2 RUNTIME=3 scripts/bench-serve.sh
#   LAYOUTS="direct linear1 nbdkit-nbd" scripts/bench-serve.sh   # the proxy position only
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-2}; RUNTIME=${RUNTIME:-3}; SIZE_MIB=${SIZE_MIB:-512}
for tool in fio python3 nbdkit; do command -v $tool >/dev/null || { echo "bench-serve: needs $tool (make deps)" >&2; exit 2; }; done
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
fiojob() { # fiojob URI RW BS QD [RATE] -> prints IOPS, MiB/s, the server's CPU us per I/O, p50 and p99 latency (us)
  local rate=(--ramp_time=1) t0 t1 # a rated run counts every I/O it ran: no ramp
  [ -n "${5:-}" ] && rate=(--rate_iops="$5")
  t0=$(cputicks "$server")
  fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" --numjobs=1 --size=$((SIZE_MIB/2))M "${rate[@]}" \
      --time_based --runtime="$RUNTIME" --norandommap --lat_percentiles=1 --output-format=json --output="$work/fio.json" >/dev/null 2>&1 ||
    { echo "bench-serve: fio failed against $1" >&2; exit 1; }
  t1=$(cputicks "$server")
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; s=j["read"] if j["read"]["io_bytes"] else j["write"]; n=s["total_ios"]; p=s.get("lat_ns",{}).get("percentile",{}); print(round(s["iops"]), round(s["bw"]/1024), round((int(sys.argv[3])-int(sys.argv[2]))*1e6/int(sys.argv[4])/max(n,1), 2), round(p.get("50.000000",0)/1000,1), round(p.get("99.000000",0)/1000,1))' "$work/fio.json" "$t0" "$t1" "$(getconf CLK_TCK)"
}
fio_ready() { nbdinfo --size "$1" >/dev/null 2>&1; }
# setup LAYOUT: two fresh exports and (unless direct) a serve over them; sets $uri
setup() {
  stop_all; rm -f "$work"/*.img
  head -c ${SIZE_MIB}M /dev/zero >"$work/a.img"; cp "$work/a.img" "$work/b.img"
  start a export --listen 127.0.0.1:0 --file "$work/a.img"; local a=$addr
  if [ "$1" = direct ]; then uri="nbd://$a"; server=${pids[-1]}; return; fi
  if [ "$1" = nbdkit-nbd ]; then # nbdkit's NBD proxy in front of the export
    local port; port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    nbdkit --foreground --exit-with-parent -p "$port" -i 127.0.0.1 nbd hostname=127.0.0.1 port="${a##*:}" 2>"$work/nbdkit.log" & pids+=($!)
    for _ in $(seq 200); do fio_ready "nbd://127.0.0.1:$port" && break; sleep 0.05; done
    uri="nbd://127.0.0.1:$port"; server=${pids[-1]}; return
  fi
  if [ "$1" = linear1 ]; then # dst serve over one export: the proxy position
    printf 'listen: 127.0.0.1:0\nadmin: off\nstorage:\n  layout: linear\n  members: [nbd://%s]\n' "$a" >"$work/s.yaml"
    start serve serve --config "$work/s.yaml"; uri="nbd://$addr"; server=${pids[-1]}; return
  fi
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
workloads=${WORKLOADS:-"randread:4k:32 randwrite:4k:32 read:1m:8 write:1m:8 randread:4k:1"}
RATE_IOPS=${RATE_IOPS:-10000}
declare -A res cpu lat
for rep in $(seq "$REPS"); do
  for layout in ${LAYOUTS:-direct linear1 nbdkit-nbd linear stripe mirror mirror-nolog mirror-log64}; do
    setup "$layout"
    for w in $workloads; do
      IFS=: read -r rw bs qd <<<"$w"
      read -r iops mibs _ p50 p99 < <(fiojob "$uri" "$rw" "$bs" "$qd")
      res[$layout,$w]+="$iops:$mibs "
      lat[$layout,$w]+="$p50:$p99 "
      echo "bench-serve: rep $rep $layout $rw $bs QD$qd: $iops IOPS $mibs MiB/s, latency p50 $p50 us p99 $p99 us" >&2
      if [ "$bs" = 4k ] && [ "$qd" != 1 ] && [ "$RATE_IOPS" != 0 ]; then
        read -r iops mibs us _ < <(fiojob "$uri" "$rw" "$bs" "$qd" "$RATE_IOPS")
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
lat = {}
$(for k in "${!lat[@]}"; do echo "lat['$k'] = '${lat[$k]}'"; done)
def med(k, i): return statistics.median(int(x.split(':')[i]) for x in res[k].split()) if k in res else 0
layouts = [l for l in ('linear1','nbdkit-nbd','linear','stripe','mirror','mirror-nolog','mirror-log64') if any(k.startswith(l+',') for k in res)]
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
if 'linear1' in layouts and 'nbdkit-nbd' in layouts:
    print("\nthe proxy position: dst serve (linear of one export) against nbdkit nbd in front of the same export")
    def cpu_med(l, w):
        xs = [float(x) for x in cpu.get(l+','+w, '').split()]
        return statistics.median(xs) if xs else None
    for w in sys.argv[1].split():
        if ':4k:' in w and not w.endswith(':1'):
            a, b = cpu_med('linear1', w), cpu_med('nbdkit-nbd', w)
            if a and b:
                print(f"  {w:<16} CPU per I/O the proxy adds at {sys.argv[2]} IOPS: serve {a:.1f} us, nbdkit nbd {b:.1f} us: {a/b:.2f}x (target <= 0.8x)")
    for w in sys.argv[1].split():
        if not w.endswith(':1'): continue
        def l50(l): return statistics.median(float(x.split(':')[0]) for x in lat[l+','+w].split()) if l+','+w in lat else None
        def l99(l): return statistics.median(float(x.split(':')[1]) for x in lat[l+','+w].split()) if l+','+w in lat else None
        d, a, b = l50('direct'), l50('linear1'), l50('nbdkit-nbd')
        if d and a and b:
            print(f"  {w:<16} QD1 latency p50 added over the export: serve +{a-d:.1f} us, nbdkit nbd +{b-d:.1f} us "
                  f"(p99: direct {l99('direct'):.0f}, serve {l99('linear1'):.0f}, nbdkit nbd {l99('nbdkit-nbd'):.0f} us; target: serve adds no more)")
    for w in sys.argv[1].split():
        if ':1m:' not in w: continue
        a, b = med('linear1,'+w, 1), med('nbdkit-nbd,'+w, 1)
        if a and b:
            print(f"  {w:<16} through serve {a} MiB/s, through nbdkit nbd {b} MiB/s: {a/b:.2f}x (target >= 1.2x)")
PY
