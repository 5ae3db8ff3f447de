# Sourced by the slurm/*.sbatch templates (not a job script): print a command exactly as it would run,
# run one so that SLURM's warning before the time limit requeues the task, find the allocation's first host.

# The arguments shell-quoted, joined by spaces (like Python's shlex.join): a line to paste into a shell.
quote() {
  local arg quoted=() q="'\\''"
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then quoted+=("$arg"); else quoted+=("'${arg//\'/$q}'"); fi
  done
  echo "${quoted[*]}"
}

# DRY_RUN=1: print the command. Else run it; when SLURM sends USR1 (#SBATCH --signal=B:USR1@SECONDS: that
# long before the time limit), requeue this task (`scontrol requeue`): SLURM then stops the command with
# SIGTERM (train.py stops as on Ctrl-C, keeping its checkpoints) and, back in the queue, the task reruns the
# same command, which resumes from its run dir. Returns the command's exit status.
run() {
  if [[ ${DRY_RUN:-0} == 1 ]]; then quote "$@"; return; fi
  echo "+ $(quote "$@")"
  trap 'echo "time limit near: requeue job $SLURM_JOB_ID"; "${SCONTROL:-scontrol}" requeue "$SLURM_JOB_ID"' USR1
  "$@" &
  local pid=$! status=0
  wait "$pid" || status=$?
  while ((status > 128)) && kill -0 "$pid" 2>/dev/null; do  # wait ended for the signal: the command still runs
    status=0
    wait "$pid" || status=$?
  done
  trap - USR1
  return "$status"
}

# The first host of a SLURM node list (SLURM_JOB_NODELIST): `scontrol show hostnames` where scontrol exists
# (SCONTROL names another), else the list's first entry expanded here, for the forms host, host[01-04,07]
# and host[1-2]suffix (node[01-04],gpu7 -> node01); set MAIN_NODE in the scripts for any other form.
first_host() {
  local scontrol=${SCONTROL:-scontrol} bracketed='^([^],[]+)\[([^],[-]+)[^]]*\]([^,]*)'
  if command -v "$scontrol" >/dev/null; then
    "$scontrol" show hostnames "$1" | sed -n 1p  # sed reads all: no SIGPIPE for scontrol under pipefail
  elif [[ $1 =~ $bracketed ]]; then
    echo "${BASH_REMATCH[1]}${BASH_REMATCH[2]}${BASH_REMATCH[3]}"
  else
    echo "${1%%,*}"
  fi
}
