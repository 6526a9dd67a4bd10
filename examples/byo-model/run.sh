#!/usr/bin/env bash
# Bring your own model, end to end: script the network of model.py, train it with FedAvg and with
# split learning (block A on the workers, block B on the coordinator), load each model.pt in
# Python and score it, and print one table: accuracy (Fedra's and Python's), bytes, wall time.
#
#   examples/byo-model/run.sh [--small] [--out DIR] [--fedra PATH]
#
# Full budget: 4 workers on all of Fashion-MNIST, 3 passes over the data with each scheme
# (FedAvg: 3 rounds of 1 local epoch; split: 3 epochs). --small: 2 workers, 2,000 training and
# 1,000 test images, 1 pass (the test suite runs this). Results in DIR (default runs/byo-model):
# net.pt, fedavg/, split/ (each with metrics.jsonl, summary.json, model.pt), table.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
fedra="$root/build/fedra"
out="runs/byo-model"
small=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --small) small=1; shift ;;
    --out) out="$2"; shift 2 ;;
    --fedra) fedra="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ -x "$fedra" ]] || { echo "run.sh: no fedra binary at $fedra (build with ./scripts/build.sh, or pass --fedra)" >&2; exit 2; }
py=/usr/bin/python3

if [[ $small == 1 ]]; then
  workers=2; data="fmnist:limit=2000,test_limit=1000"; passes=1; test_n=1000
else
  workers=4; data="fmnist"; passes=3; test_n=10000
fi
mkdir -p "$out"
rm -rf "$out/fedavg" "$out/split"
"$py" "$here/model.py" make "$out/net.pt" 0
common=(--workers "$workers" --dataset "$data" --seed 1 --threads 1 --worker-threads 1)

echo "== FedAvg: the whole network on every worker, $passes round(s) of 1 local epoch"
"$fedra" simulate --strategy fedavg --model "torchscript:$out/net.pt" "${common[@]}" \
  --fedavg.rounds "$passes" --fedavg.local_epochs 1 --fedavg.lr 0.05 --fedavg.momentum 0.5 --out "$out/fedavg"

echo "== Split learning: block A on the workers, block B on the coordinator, $passes epoch(s)"
"$fedra" simulate --strategy split --model "torchscript:$out/net.pt,cut=block_a" "${common[@]}" \
  --split.epochs "$passes" --split.lr 0.05 --split.momentum 0.5 --out "$out/split"

"$py" - "$out" "$test_n" "$here/model.py" <<'PY'
import json, subprocess, sys
out, n, model_py = sys.argv[1], sys.argv[2], sys.argv[3]
rows = []
for scheme in ("fedavg", "split"):
    lines = [json.loads(l) for l in open(f"{out}/{scheme}/metrics.jsonl")]
    summary = json.load(open(f"{out}/{scheme}/summary.json"))
    ev = json.loads(subprocess.run(["/usr/bin/python3", model_py, "evaluate", f"{out}/{scheme}/model.pt", n],
                                   check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    last = lines[-1]
    rows.append((scheme, last["test_accuracy"], ev["accuracy"], (last["bytes_up"] + last["bytes_down"]) / 2**20,
                 last["elapsed_s"], summary["status"]))
with open(f"{out}/table.md", "w") as f:
    f.write("| scheme | test accuracy (Fedra) | model.pt in Python | MiB on the wire | wall time (s) | status |\n")
    f.write("|---|---|---|---|---|---|\n")
    for r in rows:
        f.write(f"| {r[0]} | {r[1]:.4f} | {r[2]:.4f} | {r[3]:.1f} | {r[4]:.1f} | {r[5]} |\n")
print(open(f"{out}/table.md").read(), end="")
bad = [r[0] for r in rows if abs(r[1] - r[2]) > 1e-9 or r[5] != "completed"]
if bad:
    sys.exit(f"model.pt in Python disagrees with Fedra's figure, or the run failed: {', '.join(bad)}")
PY
