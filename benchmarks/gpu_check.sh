#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) for both 5B families on this machine's GPU, with no package
# registry: what this machine lacks comes as wheels in .whl/ beside the checkout (README, "The GPU check"),
# installed into .whl/site. Each family's log goes to $OUT/<family>.log and its last line, the JSON, to
# $OUT/<family>.json (OUT: runs/gpu-check). Arguments go to gpu_check.py (e.g. --steps 10 --skip-train).
set -euo pipefail
cd "$(dirname "$0")/.."
site=""
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .whl/site .whl/*.whl
  site=":$PWD/.whl/site"
fi
export PYTHONPATH="$PWD$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-runs/gpu-check}"
mkdir -p "$out"
for family in ${FAMILIES:-cogvideox-t2v wan2.2-ti2v}; do
  python3 -m benchmarks.gpu_check --family "$family" "$@" 2>&1 | tee "$out/$family.log"
  tail -n 1 "$out/$family.log" > "$out/$family.json"
done
