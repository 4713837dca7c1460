#!/usr/bin/env bash
# The 5-seed run of the variants chosen on validation users (issue 10): the baselines (with and without the
# factorized user x item term) and the LiMAML candidates, one directory per seed, then merged.
#
#   SEEDS="0 1 2 3 4" scripts/protocol_confirm.sh user-cold
#   limaml reproduce --merge runs/confirm/user-cold/seed* --out docs/protocols_ml100k/confirm/user-cold
set -euo pipefail
P=$1
DATA=${DATA:-../shared/data/ml-100k}
COMMON=(--quick --epochs 10 --tune-every 2 --ft-steps 1 3 --ft-learning-rates 0.05 0.2 0.5 --data-path "$DATA" --verbose 0)
[ "$P" = few-shot ] && COMMON+=(--support-size 10)
V=(--models vanilla 'W&D-ID'
   --variant 'vanilla-dot!=vanilla:dot=True' --variant 'W&D-ID-dot!=wd_id:dot=True'
   --variant 'mixed=limaml:mixed_loss_weight=1.0' --variant 'mixed-dot=limaml:mixed_loss_weight=1.0,dot=True'
   --variant 'mixed3-dot=limaml:mixed_loss_weight=3.0,dot=True')
for s in ${SEEDS:-0 1 2 3 4}; do
  limaml reproduce --protocol "$P" "${COMMON[@]}" --seeds "$s" "${V[@]}" --out "runs/confirm/$P/seed$s"
done
