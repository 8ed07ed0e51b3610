#!/usr/bin/env bash
# The CPU step sweep of the docs (docs/benchmarks.md): ours vs the plain reference, batch 8, fp32,
# the quick start's DeepSpeed config (zero2.json; one rank runs it as ZeRO-0, as the trainer does),
# interleaved slots A B B A A B ..., for the main job's model (tiny at 64 px), tiny at 224 px and
# small at 224 px. Run it on an idle machine; results go to benchmarks/results/cpu-<cores>core/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/cpu-$(nproc)core}
COMMON=(step --device cpu --precision fp32 --batch 8 --zero 2 --rounds 6)
python3 launch/benchmark.py "${COMMON[@]}" --model uniemox_vit_tiny_patch16 --arch img_size=64,depth=6 \
    --teacher uniemox-clip-tiny-64 --warmup 5 --steps 20 --out "$OUT/step-tiny64.json"
python3 launch/benchmark.py "${COMMON[@]}" --model uniemox_vit_tiny_patch16 --teacher uniemox-clip-tiny \
    --warmup 3 --steps 5 --out "$OUT/step-tiny224.json"
python3 launch/benchmark.py "${COMMON[@]}" --model uniemox_vit_small_patch16 --teacher uniemox-clip-tiny \
    --warmup 2 --steps 3 --out "$OUT/step-small224.json"
