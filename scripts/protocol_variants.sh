#!/usr/bin/env bash
# The variants tried to make LiMAML win (issue 10, section 3), trained on one protocol and scored on its
# validation users; read the result with `limaml reproduce --compare` (docs/protocols_ml100k/README.md).
#
#   SEEDS="0 1 2" scripts/protocol_variants.sh few-shot a     # groups: a .. f (below); protocols: few-shot, user-cold
#   limaml reproduce --compare runs/variants/few-shot/*/seed* --out docs/protocols_ml100k/variants/few-shot
set -euo pipefail
P=$1; G=$2
DATA=${DATA:-../shared/data/ml-100k}
COMMON=(--quick --epochs 10 --tune-every 2 --ft-steps 1 3 --ft-learning-rates 0.05 0.2 0.5 --data-path "$DATA" --verbose 0)
[ "$P" = few-shot ] && COMMON+=(--support-size 10)
case $G in
  a) V=(--models vanilla 'W&D-ID' LiMAML                      # the objective: λ of the mixed loss, Meta-SGD
        --variant 'mixed=limaml:mixed_loss_weight=1.0' --variant 'mixed0.3=limaml:mixed_loss_weight=0.3'
        --variant 'mixed3=limaml:mixed_loss_weight=3.0'
        --variant 'mixed-metasgd=limaml:mixed_loss_weight=1.0,learn_inner_learning_rate=True') ;;
  b) V=(--models vanilla                                       # steps, item-aware block, warm start, width, ID block
        --variant 'mixed-n3=limaml:mixed_loss_weight=1.0,inner_steps=3'
        --variant 'mixed-item=limaml:mixed_loss_weight=1.0,item_aware=True'
        --variant 'mixed-warm=limaml:mixed_loss_weight=1.0,warm_start=5'
        --variant 'mixed-wide=limaml:mixed_loss_weight=1.0,meta_dim=32,meta_hidden=(64,)'
        --variant 'mixed-ID=limaml_id:mixed_loss_weight=1.0') ;;
  c) V=(--models vanilla                                       # the control: no history features anywhere
        --variant 'vanilla-nohist!=vanilla:history=False' --variant 'W&D-ID-nohist!=wd_id:history=False'
        --variant 'LiMAML-nohist=limaml:history=False' --variant 'mixed-nohist=limaml:mixed_loss_weight=1.0,history=False') ;;
  d) V=(--models vanilla                                       # a factorized user x item term in the global block
        --variant 'vanilla-dot!=vanilla:dot=True' --variant 'W&D-ID-dot!=wd_id:dot=True'
        --variant 'mixed-dot=limaml:mixed_loss_weight=1.0,dot=True' --variant 'mixed3-dot=limaml:mixed_loss_weight=3.0,dot=True') ;;
  e) V=(--models vanilla 'W&D-ID'                             # a transformer meta block over the previous 20 ratings
        --variant 'mixed=limaml:mixed_loss_weight=1.0'
        --variant 'seq-mixed=limaml:mixed_loss_weight=1.0,meta_block=transformer'
        --variant 'vanilla-seq!=vanilla:meta_block=transformer') ;;   # the sequence read by a plain model
  f) V=(--models vanilla 'W&D-ID'                             # two task definitions: user and user x main genre
        --variant 'mixed=limaml:mixed_loss_weight=1.0'
        --variant 'mixed-genre=limaml:mixed_loss_weight=1.0,definitions=("user","user_x_genre")') ;;
  *) echo "unknown group $G (a .. f)" >&2; exit 2 ;;
esac
for s in ${SEEDS:-0 1 2}; do
  limaml reproduce --protocol "$P" "${COMMON[@]}" --seeds "$s" "${V[@]}" --out "runs/variants/$P/$G/seed$s"
done
