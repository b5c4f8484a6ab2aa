#!/bin/bash
# Scrub of a 255 MiB-written mirror: two dst exports compared by digests, the
# same two read (scrub.digests: false), and two nbdkit file exports; same run.
set -e
dir=$(mktemp -d); dst=${DST:-$(pwd)/bin/dst}; cd "$dir"; cp "$dst" ./dst
rm -f *.img *.log *.yaml scrub-*.json
pids=()
cleanup() { for p in "${pids[@]}"; do kill $p 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap 'cleanup; rm -rf "$dir"' EXIT
for n in a b c d; do truncate -s 256M $n.img; done
./dst export --listen 127.0.0.1:19101 --file a.img > ea.log 2>&1 & pids+=($!)
./dst export --listen 127.0.0.1:19102 --file b.img > eb.log 2>&1 & pids+=($!)
nbdkit -f -p 19103 -i 127.0.0.1 file c.img & pids+=($!)
nbdkit -f -p 19104 -i 127.0.0.1 file d.img & pids+=($!)
sleep 1
for kind in dst-digests dst-reads nbdkit; do
  extra=""
  case $kind in
    dst-digests) m="nbd://127.0.0.1:19101, nbd://127.0.0.1:19102";;
    dst-reads) m="nbd://127.0.0.1:19101, nbd://127.0.0.1:19102"; extra="scrub:\n  digests: false\n";;
    nbdkit) m="nbd://127.0.0.1:19103, nbd://127.0.0.1:19104";;
  esac
  printf "listen: 127.0.0.1:19111\nadmin: 127.0.0.1:19112\nresync:\n  rate: unlimited\n${extra}storage:\n  layout: mirror\n  members: [$m]\n" > $kind.yaml
  ./dst serve --config $kind.yaml > s-$kind.log 2>&1 & sp=$!
  sleep 1
  [ $kind = dst-reads ] || qemu-io -f raw -c "write -P 0x5a 0 255M" nbd://127.0.0.1:19111 > /dev/null
  for rep in 1 2 3; do
    ./dst scrub --admin 127.0.0.1:19112 --json > scrub-$kind-$rep.json
    python3 - $kind $rep <<'PY'
import json, sys
from datetime import datetime
kind, rep = sys.argv[1], sys.argv[2]
r = json.load(open(f"scrub-{kind}-{rep}.json"))
t = lambda s: datetime.fromisoformat(s[:26].rstrip('Z') if '.' in s else s.rstrip('Z'))
print(f"{kind:12} rep {rep}: compared {r['bytes_read']>>20} MiB, by digests {r['digested_bytes']>>20} MiB, "
      f"digest bytes {r['digest_bytes']>>10} KiB, data over the network {(r['bytes_read']-r['digested_bytes'])>>20} MiB, "
      f"{(t(r['finished'])-t(r['started'])).total_seconds():.3f} s")
PY
  done
  kill $sp; wait $sp || true
done
