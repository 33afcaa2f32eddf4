#!/usr/bin/env bash
# Dual-policy training against a checkpoint NPC on a cloud GPU, launched with SkyPilot.
#
# Usage: scripts/dual_policy_sky.sh [--dry-run] [--nodes N] [EXPERIMENT] [NPC_URI] [TIMESTEPS] [WORKERS]
#                                   [OVERRIDE...]
#
#   EXPERIMENT  run name                (default: $USER.dual_policy_sky.<MM-DD>)
#   NPC_URI     NPC checkpoint URI      (default: wandb://metta-research/..., the NPC of the original
#                                        dual-policy feature)
#   TIMESTEPS   trainer.total_timesteps (default: 10000000000)
#   WORKERS     trainer.num_workers     (default: 4)
#   OVERRIDE    any further npc-train overrides, e.g. env=battle trainer.num_envs=64
#   --nodes N   N > 1: one run over N nodes (scripts/sky/train_ray.yaml): a Ray cluster, the
#               learner on node 0, WORKERS env workers as Ray actors over all nodes (default: 1 node,
#               scripts/sky/train.yaml, worker processes)
#
# Examples:
#   scripts/dual_policy_sky.sh my_experiment_name
#   scripts/dual_policy_sky.sh my_experiment_name "wandb://my_entity/my_project/model/my_npc_policy:v1"
#   scripts/dual_policy_sky.sh my_experiment_name "wandb://my_entity/my_project/model/my_npc:v3" 5000000000 8
#   scripts/dual_policy_sky.sh --nodes 4 my_experiment_name "wandb://e/p/model/npc:v3" 5000000000 32 \
#     env=battle trainer.num_envs=128
#
# Environment: SKY_DRY_RUN=1 (or --dry-run) prints the launch command instead of running it;
# SKY_CLUSTER names the cluster (default npc-<EXPERIMENT>); SKY_ARGS adds flags to `sky launch`
# (e.g. "--use-spot --down"); WANDB_API_KEY (required) is passed to the job as a secret.
set -euo pipefail

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "dual_policy_sky.sh: error: $*" >&2; exit 2; }

DRY_RUN="${SKY_DRY_RUN:-0}"
NODES=1
while (( $# )); do
  case "$1" in
    -h|--help) usage 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --nodes) (( $# >= 2 )) || die "--nodes needs a number of nodes"; NODES="$2"; shift 2 ;;
    --nodes=*) NODES="${1#--nodes=}"; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got '$NODES'"

RUN_NAME="${1:-${USER:-$(id -un)}.dual_policy_sky.$(date +%m-%d)}"
NPC_URI="${2:-wandb://metta-research/dual_policy_training/model/bullm_dual_policy_against_roomba_v9:v2}"
TOTAL_TIMESTEPS="${3:-10000000000}"
NUM_WORKERS="${4:-4}"
shift $(( $# < 4 ? $# : 4 ))

[[ "$RUN_NAME" =~ ^[A-Za-z0-9._-]+$ ]] || die "EXPERIMENT must be letters, digits, '.', '_' or '-', got '$RUN_NAME'"
[[ "$TOTAL_TIMESTEPS" =~ ^[1-9][0-9]*$ ]] || die "TIMESTEPS must be a positive integer, got '$TOTAL_TIMESTEPS'"
[[ "$NUM_WORKERS" =~ ^[0-9]+$ ]] || die "WORKERS must be a non-negative integer, got '$NUM_WORKERS'"
for override in "$@"; do
  [[ "$override" == *=* ]] || die "extra arguments must be npc-train overrides key=value, got '$override'"
  if (( NODES > 1 )); then
    case "${override#+}" in
      trainer.backend=*|trainer.ray_address=*|trainer.start_method=*)
        die "--nodes $NODES sets trainer.backend=ray and trainer.ray_address (the job's Ray cluster);" \
            "drop '$override'" ;;
    esac
  fi
done
if (( NODES > 1 )) && (( NUM_WORKERS < 1 )); then
  die "--nodes $NODES needs WORKERS >= 1: the env workers are Ray actors spread over the nodes"
fi

# The URI as the job will parse it, and the job's overrides composed against the configs (when
# npc_wrapper, and hydra for the configs, import locally), so bad input fails here and not on a
# provisioned cluster. A local path is only checked on the cluster, where it is read; the device too.
if python3 -c "import npc_wrapper" 2>/dev/null; then
  input_error="$(python3 - "$NPC_URI" "$RUN_NAME" "$TOTAL_TIMESTEPS" "$NUM_WORKERS" "$@" <<'PY'
import sys
from npc_wrapper.checkpoints import parse_uri
from npc_wrapper.errors import CheckpointError
try:
    parse_uri(sys.argv[1])
except CheckpointError as e:
    sys.exit(print("NPC_URI: " + " ".join(str(e).split())))
try:
    import hydra  # noqa: F401
except ImportError:
    sys.exit()
from npc_wrapper.cli.checks import precheck
from npc_wrapper.cli.errors import CLIError
uri, run, steps, workers, *overrides = sys.argv[1:]
try:  # npc-train's own pre-check of scripts/sky/train.yaml's run:, without the device (the cluster's)
    precheck([
        "+user=dual_policy_checkpoint_example", f"run={run}", f"trainer.total_timesteps={steps}",
        f"trainer.num_workers={workers}", f"trainer.dual_policy.checkpoint_npc.uri='{uri}'",
        *(o for o in overrides if not o.startswith("device=")),
    ])
except CLIError as e:
    print(" ".join(str(e).split()))
PY
)" || die "cannot check the arguments with npc_wrapper (python3 failed)"
  [[ -z "$input_error" ]] || die "$input_error"
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
OVERRIDES=""
if (( $# )); then OVERRIDES="$(printf '%q ' "$@")"; fi
CLUSTER="${SKY_CLUSTER:-npc-$(echo "$RUN_NAME" | tr '._' '--' | tr '[:upper:]' '[:lower:]')}"

TASK="$REPO/scripts/sky/train.yaml"
if (( NODES > 1 )); then TASK="$REPO/scripts/sky/train_ray.yaml"; fi

cmd=(sky launch --yes --detach-run --cluster "$CLUSTER"
     --env "RUN=$RUN_NAME"
     --env "NPC_URI=$NPC_URI"
     --env "TOTAL_TIMESTEPS=$TOTAL_TIMESTEPS"
     --env "NUM_WORKERS=$NUM_WORKERS"
     --env "OVERRIDES=$OVERRIDES"
     --secret WANDB_API_KEY)
if (( NODES > 1 )); then cmd+=(--num-nodes "$NODES"); fi
if [[ -n "${SKY_ARGS:-}" ]]; then read -r -a extra <<< "$SKY_ARGS"; cmd+=("${extra[@]}"); fi
cmd+=("$TASK")

if [[ "$DRY_RUN" != 1 ]]; then
  command -v sky >/dev/null || die "SkyPilot is not installed: pip install 'skypilot[aws]' (or [gcp], [azure], ...) and run 'sky check'"
  [[ -n "${WANDB_API_KEY:-}" ]] || die "WANDB_API_KEY is not set: export it (https://wandb.ai/authorize); the job logs its metrics and final model to wandb"
fi

echo "Starting dual-policy training with a checkpoint NPC using SkyPilot"
echo "Run name: $RUN_NAME"
echo "NPC checkpoint URI: $NPC_URI"
echo "Total timesteps: $TOTAL_TIMESTEPS"
echo "Num workers: $NUM_WORKERS"
if (( NODES > 1 )); then
  echo "Nodes: $NODES (a Ray cluster; the env workers are Ray actors on every node)"
fi
[[ -n "$OVERRIDES" ]] && echo "Overrides: $OVERRIDES"

if [[ "$DRY_RUN" == 1 ]]; then
  printf 'dry run, would run:'; printf ' %q' "${cmd[@]}"; printf '\n'
  exit 0
fi

cd "$REPO"
"${cmd[@]}"
echo "Launched on cluster $CLUSTER. Follow the logs: sky logs $CLUSTER"
echo "The final model is logged to wandb as a model artifact named $RUN_NAME"
