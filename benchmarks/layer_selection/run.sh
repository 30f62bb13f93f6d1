#!/bin/bash
# Layer-selection study on the demo teacher. Usage: [R=OUT TOK=TOKENIZER DATA=DIR] bash benchmarks/layer_selection/run.sh [TEACHER] [KD_STEPS] [KLG_STEPS] [LIMIT]
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
T=${1:-runs/select/teacher/model}; KD=${2:-150}; KLG=${3:-30}; LIMIT=${4:-50}
R=${R:-runs/select}; TOK=${TOK:-runs/demo/tokenizer}; DATA=${DATA:-runs/demo/data}; mkdir -p $R
sel() { python -m thinkfast.cli select-layers --teacher $T --tokenizer $TOK \
          --data $DATA/train.jsonl --max-examples 4000 \
          --prompt-template $'Question: {question}\nAnswer:' --response-template $' {answer}\n\n' \
          --no-bos --no-eos --no-pack --seq-len 512 --eval-blocks 32 --threads 1 --no-progress "$@"; }
for keep in 25 50; do
  f=0.$keep
  sel --method uniform --keep $f --out $R/uniform_$keep.json
  sel --method loo --keep $f --out $R/loo_$keep.json
  sel --method kl-guided --keep $f --out $R/klg_$keep.json --steps $KLG --batch-size 4 --lr 0.001 --work-dir $R/klg.runs
done
python benchmarks/layer_selection/plot.py $R
