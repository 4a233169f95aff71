#!/bin/bash
# The job step of train.sbatch / train_cpu.sbatch: `srun` starts one `experiments.train` per task in a run
# directory bound to this submission (cluster, job id, first submit time), which a requeue of the job keeps.
# Usage (inside a batch job, from the clone's root): train_step.sh cpu|ddp [hydra overrides...]
set -euo pipefail
kind=$1
shift
py=${SUITE_PYTHON:-$PWD/.venv/bin/python}
if [ ! -x "$py" ]; then
  echo "train_step.sh: no Python at $py. Submit from the clone's root after the README's install, or set SUITE_PYTHON." >&2
  exit 2
fi
nodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
tasks=${SLURM_NTASKS_PER_NODE:-$(( ${SLURM_NTASKS:-1} / nodes ))}
tasks=${tasks%%(*}                      # "2(x3)" -> 2
trainer=$kind
if [ "$kind" = cpu ] && [ "$tasks" -gt 1 ]; then trainer=ddp_cpu; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export WANDB_INIT_TIMEOUT=${WANDB_INIT_TIMEOUT:-120}
# The run directory is named on the first start: SLURM's SubmitTime changes when the job is requeued, so a
# restart reads the name back from a small file keyed by cluster and job id.
base=${SUITE_LOG_DIR:-logs}/train/slurm
key="${base}/.${SLURM_CLUSTER_NAME:-cluster}_${SLURM_JOB_ID}.run_dir"
if [ -n "${SUITE_RUN_DIR:-}" ]; then
  run_dir=$SUITE_RUN_DIR
elif [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && [ -s "$key" ]; then
  run_dir=$(cat "$key")
else
  submitted=$(scontrol show job -o "$SLURM_JOB_ID" | sed -n 's/.*SubmitTime=\([0-9T:-]*\).*/\1/p' | tr -d ':-')
  run_dir=${base}/${SLURM_CLUSTER_NAME:-cluster}_${SLURM_JOB_ID}_${submitted:-$(date +%Y%m%dT%H%M%S)}
  mkdir -p "$base" && printf '%s\n' "$run_dir" > "$key"
fi
echo "train_step.sh: job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0}: ${tasks} task(s) x ${nodes} node(s), trainer=${trainer}, run directory ${run_dir}"
srun "$py" -m experiments.train "trainer=${trainer}" "trainer.devices=${tasks}" "trainer.num_nodes=${nodes}" \
  "hydra.run.dir=${run_dir}" "$@"
