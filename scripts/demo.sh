#!/usr/bin/env bash
# The main job, every approach, with the seed's prompt, seed 19687 and the learned tokens, on the demo family
# shipped in fashiongen/demo_models/ (trained here from nothing: how, in its recipe.json). No training, no export,
# no torch at run time. Extra arguments go to the generate commands.
#
# A checkout without the shipped worn model (train it with `python -m fashiongen.training.demo --work DIR --ship`)
# runs approach 3 where its model is shipped, the shipped segmenter on a fresh procedural render, and approach 1's
# pipeline end to end on a small SD 1.x with seeded random weights (noise out).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
FG=.venv/bin/fashiongen
PROMPT="black short sleeve crewneck crop top"
mkdir -p demo
approach2() {  # the shipped catalog searched for the prompt, its nearest item edited toward it
  if [ -f fashiongen/demo_models/engines/catalog/index.json ]; then
    echo "approach 2: the shipped demo catalog (500 product shots) searched for the prompt (CLIP + captions)"
    "$FG" search --prompt "$PROMPT" -k 3
    if [ -f fashiongen/demo_models/engines/pix2pix/manifest.json ]; then
      echo "approach 2: the nearest catalog item, edited toward the prompt by the shipped InstructPix2Pix editor"
      "$FG" edit --from-catalog --prompt "$PROMPT" --seed 19687 --out demo/approach2.png --timings
      echo "image: demo/approach2.png (the edited catalog item)"
    fi
  fi
}
if [ -f fashiongen/demo_models/engines/worn/manifest.json ]; then
  echo "approach 1: a person wearing the garment (learned tokens <studio-style>, <wrong>), cut out onto white"
  "$FG" generate --prompt "<studio-style> $PROMPT" --negative-prompt "<wrong>" --seed 19687 \
    --cutout auto --keep-raw --out demo/approach1.png --timings "$@"
  echo "approach 3: the model fine-tuned on product shots draws the garment on white directly"
  "$FG" generate --engines demo-product --prompt "$PROMPT" --seed 19687 --out demo/approach3.png --timings "$@"
  echo "cutout of an existing image (the worn shot above), class named"
  "$FG" cutout demo/approach1-raw.png --class Upper-clothes --out demo/cutout.png
  echo "images: demo/approach1-raw.png (worn), demo/approach1.png (its garment on white),"
  echo "        demo/approach3.png (product shot), demo/cutout.png (cutout command)"
  approach2
  exit 0
fi
if [ -f fashiongen/demo_models/engines/product/manifest.json ]; then
  echo "approach 3: the demo model fine-tuned on product shots draws the garment on white directly"
  "$FG" generate --engines demo-product --prompt "$PROMPT" --seed 19687 --out demo/approach3.png --timings "$@"
  echo "image: demo/approach3.png (product shot)"
fi
approach2
if [ -f fashiongen/demo_models/engines/segmenter/manifest.json ]; then
  echo "the shipped demo segmenter on a worn render it never saw (fashiongen dataset, seed 4242): the top on white"
  "$FG" dataset --out demo/render --count 8 --seed 4242 --test-fraction 0 --unseen-count 0 --overwrite --no-progress
  RENDER=$(.venv/bin/python -c "import json; rows = [json.loads(l) for l in open('demo/render/worn/train/metadata.jsonl')]; print(next(r['file_name'] for r in rows if r['type'] in ('t-shirt', 'crop top', 'tank top', 'shirt', 'sweater')))")
  "$FG" cutout "demo/render/worn/train/$RENDER" --class Upper-clothes --out demo/cutout.png
  echo "images: demo/render/worn/train/$RENDER (the render), demo/cutout.png (its top on white)"
fi
echo "no approach-1 (worn) demo model in fashiongen/demo_models/: its pipeline on random weights (the image is noise)"
if [ ! -f demo/checkpoint/model_index.json ]; then
  .venv/bin/python -m fashiongen.random_checkpoints.sd --out demo/checkpoint --with-embeddings
fi
if [ ! -f engines/demo/manifest.json ]; then
  "$FG" export --model demo/checkpoint --out engines/demo \
    --embedding "demo/checkpoint/embeddings/midjourney-style.pt=<midjourney-style>" \
    --embedding "demo/checkpoint/embeddings/wrong.safetensors=<wrong>"
fi
"$FG" generate --engines engines/demo \
  --prompt "<midjourney-style> $PROMPT" --negative-prompt "<wrong>, blurry, person" --seed 19687 --steps 20 \
  --out demo/out.png --timings "$@"
echo "image: demo/out.png"
