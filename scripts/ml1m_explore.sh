#!/usr/bin/env bash
# Issue 26, exploration on MovieLens-1M's VALIDATION users: the tuned baselines (with and without a factorized
# user x item term; the plain model fine-tuned by SGD or by the closed-form solve) against the LiMAML
# candidates (MAML steps, head-only, closed-form ridge, each with and without the mixed objective). One
# directory per (protocol, seed); a directory whose results.json exists is skipped, so the script resumes.
# LIMAML="python -m limaml_cli" runs the checkout it is started from (e.g. a git worktree at a fixed commit).
#
#   SEEDS="0 1" scripts/ml1m_explore.sh few-shot          # K = 10
#   SEEDS="0 1" scripts/ml1m_explore.sh user-cold
#   limaml reproduce --compare runs/ml1m/few-shot/seed* --out runs/ml1m/few-shot/compare   # validation only
set -euo pipefail
P=$1
DATA=${DATA:-../shared/data/ml-1m-ordered}
OUT=${OUT:-runs/ml1m}
COMMON=(--dataset ml-1m --data-path "$DATA" --quick --epochs ${EPOCHS:-6} --tune-every 2 --ft-steps 1 3
        --ft-learning-rates 0.05 0.2 0.5 --verbose 0 --validation-only)
[ "$P" = few-shot ] && COMMON+=(--support-size ${K:-10})
# shellcheck disable=SC2206
COMMON+=(${EXTRA:-})  # e.g. EXTRA="--train-episodes first-k"
V=(--models vanilla 'W&D-ID' LiMAML
   --variant 'vanilla-dot!=vanilla:dot=True'
   --variant 'vanilla-fac!=vanilla:factor_dim=8'
   --variant 'vanilla-fac-ridge!=vanilla:factor_dim=8,inner_solver="ridge"'
   --variant 'mixed3-dot=limaml:mixed_loss_weight=3.0,dot=True'
   --variant 'head-mixed=limaml:head_only=True,mixed_loss_weight=1.0'
   --variant 'ridge=limaml:factor_dim=8,inner_solver="ridge"'
   --variant 'ridge-mixed=limaml:factor_dim=8,inner_solver="ridge",mixed_loss_weight=1.0')
for s in ${SEEDS:-0 1}; do
  dir="$OUT/$P/seed$s"
  [ -f "$dir/results.json" ] && { echo "[skip] $dir"; continue; }
  ${LIMAML:-limaml} reproduce --protocol "$P" "${COMMON[@]}" --seeds "$s" "${V[@]}" --out "$dir"
done
