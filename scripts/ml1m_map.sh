#!/usr/bin/env bash
# Issue 26, "where it pays": the best baseline vs the LiMAML candidates on MovieLens-1M's VALIDATION users,
# few-shot with support sizes K = 5 / 10 / 20 / 50 (one training, scored at every K), training tasks shaped
# like the evaluation (--train-episodes first-k), on a share of the training users. One directory per
# (share, seed); a directory whose results.json exists is skipped. Read the validation tables with
#   limaml reproduce --compare runs/ml1m-map/f0.1/seed* --out runs/ml1m-map/f0.1/compare
# LIMAML="python -m limaml_cli" runs the checkout it is started from (e.g. a git worktree at a fixed commit).
set -euo pipefail
DATA=${DATA:-../shared/data/ml-1m-ordered}
OUT=${OUT:-runs/ml1m-map}
COMMON=(--protocol few-shot --dataset ml-1m --data-path "$DATA" --quick --epochs ${EPOCHS:-6} --tune-every 2
        --ft-steps 1 3 --ft-learning-rates 0.05 0.2 0.5 --support-size 5 10 20 50 --train-episodes first-k
        --verbose 0 --validation-only)
V=(--models vanilla 'W&D-ID' LiMAML
   --variant 'vanilla-fac!=vanilla:factor_dim=8'
   --variant 'mixed3-dot=limaml:mixed_loss_weight=3.0,dot=True'
   --variant 'head-mixed=limaml:head_only=True,mixed_loss_weight=1.0'
   --variant 'ridge-mixed=limaml:factor_dim=8,inner_solver=ridge,mixed_loss_weight=1.0')
for f in ${FRACTIONS:-0.1 0.3 1.0}; do
  for s in ${SEEDS:-0 1}; do
    dir="$OUT/f$f/seed$s"
    [ -f "$dir/results.json" ] && { echo "[skip] $dir"; continue; }
    ${LIMAML:-limaml} reproduce "${COMMON[@]}" --train-user-fraction "$f" --seeds "$s" "${V[@]}" --out "$dir"
  done
done
