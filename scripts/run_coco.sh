#!/usr/bin/env bash
# The paper's full run with real checkpoints, in its order; every step skips what is done:
#   1. MAE + DINO proposals for COCO train2017 + unlabeled2017 (resumable, multi-GPU)
#   2. DenseCL R-101 -> detectron2 weights
#   3. SOLOv2 training, 60k steps (resumes from the last checkpoint)
#   4. class-agnostic evaluation on COCO val2017, COCO20k, VOC 2012 and UVO val
# Needs: $DETECTRON2_DATASETS laid out as datasets/README.md says, and in checkpoints/ the
# official mae_pretrain_vit_base.pth, dino_vitbase16_pretrain.pth, densecl_r101_imagenet_200ep.pth.
# Usage: NUM_GPUS=8 bash scripts/run_coco.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
NUM_GPUS=${NUM_GPUS:-1}
export DETECTRON2_DATASETS=${DETECTRON2_DATASETS:-$PWD/datasets}
TRAIN_CFG=configs/coco/solov2_R101_densecl_engstler.yaml
OUT=output/coco/solov2_R101_densecl_engstler
PSEUDO=$DETECTRON2_DATASETS/coco/pseudo/train2017_unlabeled2017_mae.json
DENSECL=checkpoints/densecl_r101_imagenet_200ep.pth

for f in checkpoints/mae_pretrain_vit_base.pth checkpoints/dino_vitbase16_pretrain.pth "$DENSECL"; do
  [[ -f $f ]] || { echo "missing checkpoint: $f (place the official file there)" >&2; exit 1; }
done

step() { echo; echo "== $*"; }

step "1/4 proposals -> $PSEUDO"
if [[ -f $PSEUDO ]]; then echo "already done"; else
  $PY tools/generate_proposals.py --config-file configs/proposals/coco_mae.yaml \
    --dataset uis_coco_train2017_unlabeled2017 --output "$PSEUDO" --num-gpus "$NUM_GPUS" --vis 16
  $PY tools/validate_json.py "$PSEUDO" --kind pseudo
fi

step "2/4 DenseCL R-101 -> detectron2 weights"
if [[ -f ${DENSECL%.pth}_d2.pkl ]]; then echo "already done"; else
  $PY tools/convert_checkpoint.py "$DENSECL" "${DENSECL%.pth}_d2.pkl" --format densecl
fi

step "3/4 training ($TRAIN_CFG)"
$PY tools/train_net.py --config-file "$TRAIN_CFG" --num-gpus "$NUM_GPUS" --resume

step "4/4 evaluation"
for dataset in uis_coco_val2017 uis_coco20k uis_voc2012 uis_uvo_val; do
  metrics=$OUT/eval/$dataset/inference/$dataset/class_agnostic_metrics.json
  if [[ -f $metrics ]]; then echo "$dataset: already done"; continue; fi
  $PY tools/train_net.py --config-file "$TRAIN_CFG" --num-gpus "$NUM_GPUS" --eval-only \
    MODEL.WEIGHTS "$OUT/round1/model_final.pth" DATASETS.TEST "('$dataset',)" \
    OUTPUT_DIR "$OUT/eval/$dataset"
done
