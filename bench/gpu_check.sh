#!/usr/bin/env bash
# One short measurement on a machine with a CUDA GPU: PixArt-XL-2 and Sana 0.6B at real size, random
# weights, T5-XXL and Gemma-2 2B at their real configs in bf16 (built on the GPU from the configs
# embedded in medart_core/model_presets.py).
# Sized for a short lease: about 4 minutes for everything; each part can be run alone, and each
# part's figures are written as soon as it finishes:
#   bench/results/gpu-<date>.json   (every part's figures)
#   bench/results/gpu-<date>.md     (the Markdown table for the README, rewritten after each part)
#
#   bash bench/gpu_check.sh                        # every part
#   bash bench/gpu_check.sh --parts gen512,plain   # some parts
#   bash bench/gpu_check.sh --dry-run              # print the commands, run nothing
#   bash bench/gpu_check.sh --tiny --parts plain   # the same commands on the tests' tiny model, on CPU
# Environment: MEDART_RESULTS (results folder, default bench/results), MEDART_GPU_MODELS (where the
# model folders are built, default /tmp/medart-gpu), MEDART_PART_TIMEOUT (seconds per part, 120).
#
# Parts:
#   gen512, gen1024  generation in bf16, 20 steps, CFG: stock pipeline vs medart vs the floor
#   plain, hldf      a plain and an HLDF step with finetune/configs/paper.yaml's settings: time and
#                    peak memory vs `finetune/train.py --plan cuda`; HLDF also vs its floor
#   text-cache       the prompt-embedding cache's effect with T5-XXL
#   quant-t5         T5-XXL in bf16, 8-bit and 4-bit (skipped with a message without bitsandbytes)
#   caption          batched vs one-by-one captioning (bench/bench_caption.py)
#   sana-gen512      Sana 0.6B generation at 512 px in bf16, 20 steps, CFG, as gen512
# The machine starts bare: what it lacks must travel as wheels (64 MiB in all).
set -euo pipefail

ALL_PARTS="gen512,gen1024,plain,hldf,text-cache,quant-t5,caption,sana-gen512"
parts="$ALL_PARTS"
dry_run=0
tiny=0
part_timeout="${MEDART_PART_TIMEOUT:-120}"  # seconds per part, so one slow part cannot eat the lease

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --parts) parts="${2:?--parts needs a comma-separated list}"; shift 2 ;;
    --parts=*) parts="${1#--parts=}"; shift ;;
    --dry-run) dry_run=1; shift ;;
    --tiny) tiny=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
IFS=',' read -r -a selected <<< "$parts"
for part in "${selected[@]}"; do
  case ",$ALL_PARTS," in
    *",$part,"*) ;;
    *) echo "error: unknown part '$part'; parts: $ALL_PARTS" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
stamp="$(date -u +%Y-%m-%d)"
folder="${MEDART_RESULTS:-bench/results}"
results="$folder/gpu-$stamp.json"
table="$folder/gpu-$stamp.md"
models="${MEDART_GPU_MODELS:-/tmp/medart-gpu}"
if [ "$tiny" = 1 ]; then
  device=(--device cpu --tiny)
  results="$folder/tiny-$stamp.json"; table="$folder/tiny-$stamp.md"; models="$models-tiny"
  xl512=(--model-dir "$models/tiny")
  xl1024=(--model-dir "$models/tiny")
  sana512=(--base sana --model-dir "$models/tiny-sana")
  caption=(python bench/bench_caption.py --quick)
else
  device=(--device cuda --dtype bf16 --text-encoder full --repeats 3)
  xl512=(--preset PixArt-alpha/PixArt-XL-2-512x512 --resolution 512 --model-dir "$models/xl512")
  xl1024=(--preset PixArt-alpha/PixArt-XL-2-1024-MS --resolution 1024 --model-dir "$models/xl1024")
  sana512=(--base sana --resolution 512 --model-dir "$models/sana512")
  caption=(python bench/bench_caption.py --device cuda)
fi
bench=(python bench/bench_real_size.py "${device[@]}" --json "$results")

command_of() {
  case "$1" in
    gen512) echo "${bench[*]} ${xl512[*]} --which generate --steps 20" ;;
    gen1024) echo "${bench[*]} ${xl1024[*]} --which generate --steps 20" ;;
    plain) echo "${bench[*]} ${xl512[*]} --which plain --config finetune/configs/paper.yaml" ;;
    hldf) echo "${bench[*]} ${xl512[*]} --which hldf --config finetune/configs/paper.yaml" ;;
    text-cache) echo "${bench[*]} ${xl512[*]} --which text-cache --steps 20" ;;
    quant-t5) echo "${bench[*]} ${xl512[*]} --which quant-t5" ;;
    caption) echo "${caption[*]}" ;;
    sana-gen512) echo "${bench[*]} ${sana512[*]} --which generate --steps 20" ;;
  esac
}

failed=0
for part in "${selected[@]}"; do
  command="$(command_of "$part")"
  if [ "$dry_run" = 1 ]; then
    echo "$part: $command"
    continue
  fi
  echo "== $part: $command"
  start=$SECONDS
  if [ "$part" = caption ]; then
    mkdir -p "$folder"
    timeout "$part_timeout" $command | tee "$folder/caption-$stamp.txt" || { echo "$part failed or timed out" >&2; failed=1; }
  else
    timeout "$part_timeout" $command || { echo "$part failed or timed out" >&2; failed=1; }
    [ -f "$results" ] && python bench/bench_real_size.py --markdown "$results" > "$table.partial" && mv "$table.partial" "$table"
  fi
  echo "== $part: $((SECONDS - start)) s"
done
[ "$dry_run" = 1 ] || echo "results: $results, $table"
exit "$failed"
