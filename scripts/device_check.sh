#!/usr/bin/env bash
# Everything to measure when an accelerator is at hand, in one command (issue 14, item 6):
#
#     bash scripts/device_check.sh [OUT_DIR]        # default: device_check/
#
# 1. the test suite on the accelerator; 2. every experiment's tiny scale on its synthetic
# stand-in through the real CLI; 3. the benchmarks: LN kernel against Flax's, LN-LSTM against
# the LSTM, and each experiment's training step at the small and paper sizes. Each part writes
# its own log under OUT_DIR and a failing part does not stop the others; the summary at the end
# lists each part's exit status. Paste the tables into docs/benchmarks.md with the device name
# printed first. Takes about 15-25 minutes on one modern GPU.
set -u
out=${1:-device_check}
mkdir -p "$out"
status=()

part() {  # part NAME COMMAND...: run COMMAND, log to OUT/NAME.log, remember its exit status
    local name=$1
    shift
    echo "== $name: $*"
    "$@" >"$out/$name.log" 2>&1
    local rc=$?
    status+=("$name: exit $rc")
    tail -n 3 "$out/$name.log"
}

part devices python -c "import jax; print(jax.__version__, jax.devices())"
part tests python -m pytest -x -q
for exp in pmnist order_embeddings attentive_reader skipthought draw handwriting; do
    part "tiny_$exp" python -m experiments.run +exp="$exp" scale=tiny data.synthetic=true \
        logger=none train.progress=false data.data_dir="$out/data" hydra.run.dir="$out/tiny/$exp"
done
part bench_layers python -m scripts.bench_layers
part bench_rnn python -m scripts.bench_rnn
part bench_pmnist python -m scripts.bench_pmnist
part bench_data python -m scripts.bench_data
part bench_order_embeddings python -m scripts.bench_order_embeddings --scales small paper
for exp in attentive_reader skipthought draw handwriting; do
    part "bench_$exp" python -m "scripts.bench_$exp" --scales small paper
done

printf '%s\n' "${status[@]}" | tee "$out/summary.txt"
