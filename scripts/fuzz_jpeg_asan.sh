#!/usr/bin/env bash
# AddressSanitizer + UBSan fuzz of vitpose_scale/data/jpeg_region.c over mutations of the bundled JPEGs.
#
#   bash scripts/fuzz_jpeg_asan.sh [MUTATIONS=3000] [SEED=1] [WORKDIR=a temporary folder]
#
# Seeds: scripts/jpeg_corpus.py (small re-encodings of data/coco_sample in every sampling and
# coding, and the regression corpus); the driver (scripts/fuzz_jpeg_driver.c) adds each seed's
# restart-marked rewrite, mutates them and runs every entry point on each mutation. The run is
# split into batches of 250 mutations, one process each: a sanitizer report ends its batch
# (-fno-sanitize-recover) and counts as one finding, a wrong answer of the driver's checks
# (pixels, refused windows, the pixel limit) as one each; their inputs are kept in
# WORKDIR/findings/ and the next batch goes on. Prints "mutations: N" and "findings: K"; exit
# status 1 when K > 0.
set -euo pipefail
cd "$(dirname "$0")/.."
MUTATIONS=${1:-3000}
SEED=${2:-1}
WORK=${3:-$(mktemp -d)}
BATCH=250
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
mkdir -p "$WORK/seeds" "$WORK/findings"

"$PYTHON" scripts/jpeg_corpus.py --out "$WORK/seeds" --seeds >/dev/null
# Memory-safety and UB checks that abort on the first report; frame pointers for readable traces.
${CC_ASAN:-gcc} -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \
  -Ivitpose_scale/data -o "$WORK/fuzz_jpeg_driver" scripts/fuzz_jpeg_driver.c -ljpeg

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1:allocator_may_return_null=1:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

done_mutations=0
findings=0
batch=0
while [ "$done_mutations" -lt "$MUTATIONS" ]; do
  n=$(( MUTATIONS - done_mutations < BATCH ? MUTATIONS - done_mutations : BATCH ))
  crash="$WORK/last_input_$batch.jpg"
  log="$WORK/batch_$batch.log"
  if "$WORK/fuzz_jpeg_driver" "$n" "$(( SEED * 100003 + batch ))" "$crash" "$WORK"/seeds/*.jpg >"$log" 2>&1; then
    rm -f "$crash"
  elif grep -q "^pixel findings:" "$log"; then
    # the batch ran to its end: wrong pixels or a broken contract, each input kept by the driver
    k=$(awk '/^(pixel|contract) findings:/ {s += $3} END {print s + 0}' "$log")
    findings=$(( findings + k ))
    for f in "$crash".finding*.jpg; do [ -e "$f" ] && mv "$f" "$WORK/findings/batch_${batch}_$(basename "${f#"$crash".}")"; done
    echo "$k finding(s) in batch $batch (seed $(( SEED * 100003 + batch ))), inputs in $WORK/findings/" >&2
    grep -m 5 "^finding:" "$log" >&2 || true
  else
    # a sanitizer report (or another crash) ended the batch: its input is the last one written
    findings=$(( findings + 1 ))
    cp "$crash" "$WORK/findings/batch_${batch}.jpg" 2>/dev/null || true
    echo "sanitizer finding in batch $batch (seed $(( SEED * 100003 + batch ))): input $WORK/findings/batch_${batch}.jpg" >&2
    grep -E "ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error|SUMMARY|#[0-4] " "$log" | head -8 >&2 || tail -5 "$log" >&2
  fi
  done_mutations=$(( done_mutations + n ))
  batch=$(( batch + 1 ))
done
echo "mutations: $done_mutations"
echo "findings: $findings"
echo "work folder: $WORK"
[ "$findings" -eq 0 ]
