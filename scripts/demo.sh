#!/usr/bin/env bash
# Set everything up and run the main job on the demo checkpoint: a small SD 1.x with seeded random weights
# and two learned tokens, exported to ONNX, then text -> image with the torch-free runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
FG=.venv/bin/fashiongen
if [ ! -f demo/checkpoint/model_index.json ]; then
  .venv/bin/python -m fashiongen.random_checkpoints.sd --out demo/checkpoint --with-embeddings
fi
if [ ! -f engines/demo/manifest.json ]; then
  "$FG" export --model demo/checkpoint --out engines/demo \
    --embedding "demo/checkpoint/embeddings/midjourney-style.pt=<midjourney-style>" \
    --embedding "demo/checkpoint/embeddings/wrong.safetensors=<wrong>"
fi
"$FG" generate --engines engines/demo \
  --prompt "<midjourney-style> black short sleeve crewneck crop top" \
  --negative-prompt "<wrong>, blurry, person" --seed 19687 --steps 20 \
  --out demo/out.png --timings "$@"
