#!/usr/bin/env bash
# The benchmark tree, made once per size: half incompressible files (random, 1-32 MiB), half
# text (log-like lines), plus 3000 small files.   usage: bench/tree.sh DIR SIZE_MIB
set -euo pipefail
DATA=$1; SIZE_MIB=$2
mkdir -p "$(dirname "$DATA")"
if [ ! -f "$DATA/.done-$SIZE_MIB" ]; then
  rm -rf "$DATA"; mkdir -p "$DATA/bin" "$DATA/text" "$DATA/small"
  echo "generating ${SIZE_MIB} MiB of test data in $DATA" >&2
  python3 - "$DATA" "$SIZE_MIB" <<'PY'
import os, random, sys
root, size = sys.argv[1], int(sys.argv[2]) << 20
rnd = random.Random(42)
half, done, i = size // 2, 0, 0
while done < half:
    n = min(rnd.randint(1, 32) << 20, half - done)
    with open(f"{root}/bin/blob{i:04d}.bin", "wb") as f:
        f.write(os.urandom(n))
    done += n; i += 1
words = "GET POST PUT /api/v1/users /api/v1/orders /static/app.js 200 201 404 500 user_id order_id session latency_ms bytes ok error timeout retry".split()
done, i = 0, 0
while done < half - (3000 * 16 << 10):
    lines = []
    for _ in range(40000):
        lines.append(f"2024-05-{rnd.randint(1,28):02d}T{rnd.randint(0,23):02d}:{rnd.randint(0,59):02d}:{rnd.randint(0,59):02d}Z "
                     f"{rnd.choice(words)} {rnd.choice(words)} id={rnd.randint(0, 10**9)} "
                     f"{' '.join(rnd.choice(words) for _ in range(rnd.randint(3, 9)))}\n")
    chunk = "".join(lines).encode()
    with open(f"{root}/text/log{i:04d}.log", "wb") as f:
        f.write(chunk)
    done += len(chunk); i += 1
for j in range(3000):
    d = f"{root}/small/d{j % 50:02d}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{j:04d}", "wb") as f:
        f.write(os.urandom(rnd.randint(1, 32) << 10) if j % 2 else ("config line %d\n" % j).encode() * rnd.randint(50, 2000))
PY
  touch "$DATA/.done-$SIZE_MIB"
fi
