#!/bin/bash
# switchpoint on Slurm, in the shape OpenRLHF and veRL document: one Ray head on the first node
# (`ray start --head --block`), a Ray worker on every other node, then `ray job submit` of the run.
#   sbatch cluster/slurm_switchpoint.sh configs/paper_dapo_qwen7b.yaml [--set key=value ...]
# Run from the repository on a shared filesystem; the job's code travels as runtime_env working_dir anyway.
#SBATCH --job-name=switchpoint
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --output=switchpoint-%j.log
set -euo pipefail

CONFIG=${1:-configs/paper_dapo_qwen7b.yaml}
shift || true
# Token authentication (Ray 2.60's default) on every node and in the submitting shell; the token is generated
# on the head and read from the shared home by the others. `ray get-auth-token` prints it for the dashboard.
export RAY_AUTH_MODE=token
RAY_PORT=6379
DASHBOARD_PORT=8265

nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head_node=${nodes[0]}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address | awk '{print $1}')
echo "ray head: $head_node ($head_ip)"

srun --nodes=1 --ntasks=1 -w "$head_node" \
    ray start --head --node-ip-address="$head_ip" --port=$RAY_PORT \
    --dashboard-host=0.0.0.0 --dashboard-port=$DASHBOARD_PORT --metrics-export-port=8080 \
    --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="$SLURM_GPUS_PER_NODE" --block &
sleep 20

for node in "${nodes[@]:1}"; do
    srun --nodes=1 --ntasks=1 -w "$node" \
        ray start --address="$head_ip:$RAY_PORT" --metrics-export-port=8080 \
        --num-cpus="$SLURM_CPUS_PER_TASK" --num-gpus="$SLURM_GPUS_PER_NODE" --block &
done
sleep 20

RUN_NAME=$(basename "$CONFIG" .yaml)
ray job submit --address "http://$head_ip:$DASHBOARD_PORT" \
    --submission-id "switchpoint-$RUN_NAME-$SLURM_JOB_ID" \
    --metadata-json "{\"job_name\": \"switchpoint $RUN_NAME $CONFIG\"}" \
    --runtime-env-json '{"working_dir": ".", "env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}}' \
    -- python -m cluster.job "$CONFIG" "$@"
