#!/bin/bash
# Issue 5 evidence: RED vs Gaussian init at d_s = 64 of 128 on the demo teacher.
# Usage: [STEPS=N LIMIT=N PROMPT=plain|fewshot] bash benchmarks/red/evidence.sh [TEACHER_DIR] [DEMO_OUT]  (default: demo_out/teacher/model, demo_out)
# The teacher, tokenizer and data of a demo run are copied first, so a later demo run cannot change them.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
TF="python -m thinkfast.cli"
R=runs/red
rm -rf $R/teacher $R/data $R/tokenizer $R/red_50 $R/random_50 $R/samples
D=${2:-demo_out}
mkdir -p $R
cp -r "${1:-$D/teacher/model}" $R/teacher
cp -r $D/data $R/data
cp -r $R/teacher $R/tokenizer  # the teacher directory holds its tokenizer
T=$R/teacher
for c in red_50 random_50; do
  $TF compress --config configs/compress/$c.yaml --threads 1 train.progress=false ${STEPS:+train.steps=$STEPS} out_dir=$R/$c teacher=$T \
    tokenizer=$R/tokenizer data.train=$R/data/train.jsonl > $R/$c.log 2>&1
  tail -2 $R/$c.log
done
$TF erank --model $T $R/random_50/model $R/red_50/model --tokenizer $R/tokenizer \
  --data $R/data/test.jsonl --prompt-template $'Question: {question}\nAnswer:' \
  --response-template $' {answer}\n\n' --no-bos --no-eos --no-pack --seq-len 512 --sequences 64 --threads 1 \
  --out $R/erank.png | tee $R/erank.txt
mkdir -p $R/samples
for m in teacher:$T red:$R/red_50/model random:$R/random_50/model; do
  name=${m%%:*}; dir=${m#*:}
  common="--model $dir --task synthetic --data $R/data/test.jsonl --limit ${LIMIT:-50} --prompt-style ${PROMPT:-plain} --max-new-tokens 400 --batch-problems 8 --threads 1"
  $TF sample $common --n 1 --temperature 0 --out $R/samples/$name-greedy.jsonl 2>&1 | tail -1
  $TF sample $common --n 16 --temperature 1.0 --out $R/samples/$name-k16.jsonl 2>&1 | tail -1
done
$TF evaluate $R/samples/{teacher,random,red}-greedy.jsonl --out $R/greedy.json
$TF evaluate $R/samples/{teacher,random,red}-k16.jsonl --out $R/k16.json
echo done
