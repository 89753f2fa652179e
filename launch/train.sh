#!/usr/bin/env bash
# Launch `persona-guard train` through accelerate with one of the configs in this directory.
#
#   launch/train.sh CONFIG RECIPE [accelerate options ...] [-- recipe overrides ...]
#   launch/train.sh zero3 recipes/qwen2.5-7b-instruct/evil/preventative.yaml --num_processes 4
#   launch/train.sh fsdp recipes/qwen2.5-7b-instruct/evil/baseline.yaml -- --training.learning_rate=2e-5
#
# CONFIG is a name (single_gpu, multi_gpu, zero2, zero3, zero3_offload, fsdp, cpu_2proc) or a path.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
config="$1"; recipe="$2"; shift 2
[[ -f "$config" ]] || config="$here/$config.yaml"
[[ -f "$config" ]] || { echo "launch/train.sh: no accelerate config $1 (see $here)" >&2; exit 2; }
accelerate_args=()
while [[ $# -gt 0 && "$1" != "--" ]]; do accelerate_args+=("$1"); shift; done
[[ $# -gt 0 ]] && shift  # drop the --
exec accelerate launch --config_file "$config" "${accelerate_args[@]}" -m persona_guard.cli train "$recipe" "$@"
