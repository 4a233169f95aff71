#!/usr/bin/env bash
# Stop the private SLURM cluster that cluster_up.sh started in DIR.
# Only the PIDs listed in DIR/pids are signalled (after checking that each one
# is still the daemon we started, not a recycled PID), in reverse start order:
# SIGTERM, up to ~15 s grace, then SIGKILL.  Jobs still known to slurmctld are
# cancelled first.  Safe to run any number of times.
#
#   usage: cluster_down.sh DIR
set -uo pipefail

[[ $# -eq 1 && -n $1 ]] || { echo "usage: cluster_down.sh DIR" >&2; exit 2; }
[[ -d $1 ]] || exit 0
DIR=$(cd "$1" && pwd -P)
PIDS=$DIR/pids
[[ -s $PIDS ]] || exit 0
export PATH=$PATH:/usr/sbin:/sbin
GRACE=${SLURM_DOWN_GRACE:-15}

# Is PID alive (not a zombie) and still the process NAME that we started for DIR?
ours() {
    local name=$1 pid=$2 stat comm
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ ${stat##*) } == Z* ]] && return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name" || ( $name == mariadbd && $comm == mysqld ) ]] || return 1
    # every daemon names DIR in its command line or (slurmdbd) its environment
    tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF "$DIR" && return 0
    tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qxF "SLURM_CONF=$DIR/slurm.conf" && return 0
    return 1
}
pid_of() { awk -v n="$1" '$1==n {print $2; exit}' "$PIDS"; }

stop() {   # stop NAME PID
    local name=$1 pid=$2 i
    ours "$name" "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null
    for (( i = 0; i < GRACE * 10; i++ )); do
        ours "$name" "$pid" || return 0
        sleep 0.1
    done
    echo "cluster_down.sh: $name ($pid) ignored SIGTERM for ${GRACE}s, sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null
    for (( i = 0; i < 50; i++ )); do ours "$name" "$pid" || return 0; sleep 0.1; done
}

# 1. Cancel every job while slurmctld can still do it, and let them finish.
ctld=$(pid_of slurmctld)
if [[ -n $ctld ]] && ours slurmctld "$ctld" && [[ -f $DIR/slurm.conf ]]; then
    export SLURM_CONF=$DIR/slurm.conf
    jobs=$(timeout 10 squeue -h -o '%i' 2>/dev/null | sort -u)
    if [[ -n $jobs ]]; then
        # shellcheck disable=SC2086
        timeout 10 scancel --full $jobs >/dev/null 2>&1
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs >/dev/null 2>&1
        for (( i = 0; i < GRACE * 2; i++ )); do
            [[ -z $(timeout 5 squeue -h -o '%i' 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
fi

# 2. The daemons, newest first (slurmd, slurmctld, slurmdbd, mariadbd, munged).
mapfile -t lines < <(tac "$PIDS")
for line in "${lines[@]}"; do
    read -r name pid _ <<<"$line"
    [[ -n ${name:-} && -n ${pid:-} ]] || continue
    if [[ $name == slurmd ]] && ours slurmd "$pid"; then
        # Job step daemons forked by our slurmd: slurmstepd processes that write
        # to this cluster's slurmd log / spool.  Give them the same treatment.
        steps=()
        for p in $(pgrep -x slurmstepd 2>/dev/null); do
            if ls -l "/proc/$p/fd" 2>/dev/null | grep -qF -- "-> $DIR/"; then steps+=("$p"); fi
        done
    else
        steps=()
    fi
    stop "$name" "$pid"
    for p in "${steps[@]}"; do
        [[ $(cat "/proc/$p/comm" 2>/dev/null) == slurmstepd ]] || continue
        kill -TERM "$p" 2>/dev/null
    done
    for p in "${steps[@]}"; do
        for (( i = 0; i < 50; i++ )); do [[ -d /proc/$p ]] || break; sleep 0.1; done
        [[ $(cat "/proc/$p/comm" 2>/dev/null) == slurmstepd ]] && kill -KILL "$p" 2>/dev/null
    done
done

# 3. Job processes that outlived their step daemon (e.g. blocked in a system call when SIGTERM came): every
#    process whose environment names this cluster's slurm.conf (slurmd exports SLURM_CONF into each job).
for env in /proc/[0-9]*/environ; do
    p=${env#/proc/}; p=${p%/environ}
    [[ $p == "$$" ]] && continue
    [[ -r $env ]] || continue
    if { tr '\0' '\n' <"$env"; } 2>/dev/null | grep -qxF "SLURM_CONF=$DIR/slurm.conf"; then
        [[ $(tr '\0' '\n' <"$env" 2>/dev/null | grep -c '^SLURM_JOB_ID=') -gt 0 ]] && kill -KILL "$p" 2>/dev/null
    fi
done
exit 0
