#!/usr/bin/env bash
# Bring up a private one-node SLURM cluster (munged + MariaDB + slurmdbd +
# slurmctld + slurmd) on localhost.  Everything lives under DIR; nothing under
# /etc or /var is read or written.  Stop it again with cluster_down.sh DIR.
#
#   usage: cluster_up.sh DIR          (DIR: a fresh, empty folder; created if missing)
#   after: source DIR/env; sbatch --wrap hostname; sacct
#
# Environment knobs (optional):
#   SLURM_UP_TIMEOUT   seconds to wait for the cluster to answer   [90]
#   SLURM_CRED_EXPIRE  AuthInfo cred_expire (= requeue hold-off s) [30]
set -uo pipefail

die() { echo "cluster_up.sh: $*" >&2; exit 1; }

[[ $# -eq 1 && -n $1 ]] || die "usage: cluster_up.sh DIR"
[[ $(id -u) -eq 0 ]] || die "must run as root (the daemons run as root with SlurmUser=root)"

T0=$(date +%s)
UP_TIMEOUT=${SLURM_UP_TIMEOUT:-90}
CRED_EXPIRE=${SLURM_CRED_EXPIRE:-30}
HOSTNAME_S=$(hostname -s)
# Do not let a surrounding SLURM job/allocation (e.g. CI running under SLURM) leak into our daemons.
for v in $(compgen -v SLURM_) $(compgen -v SLURMD_) $(compgen -v SBATCH_) $(compgen -v SRUN_) $(compgen -v SALLOC_) $(compgen -v SQUEUE_); do unset "$v"; done
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

mkdir -p "$1" || die "cannot create $1"
DIR=$(cd "$1" && pwd -P)
[[ -e $DIR/pids ]] && die "$DIR/pids exists: a cluster was already started there (run cluster_down.sh first, or use a fresh DIR)"
case $DIR in *[[:space:]]*|*[,\#=]*) die "DIR must not contain spaces, ',', '#' or '=' (it goes into slurm.conf): $DIR" ;; esac
# Unix sockets (munged, slurmd's DIR/spool/slurmd.NODE/NODE_JOB.STEP) are limited to 107 bytes.
(( ${#DIR} + 2 * ${#HOSTNAME_S} + 32 <= 107 )) || die "DIR path is too long for unix sockets (${#DIR} chars; keep it under $(( 75 - 2 * ${#HOSTNAME_S} ))): $DIR"
chmod 0755 "$DIR"   # munged: socket dir and parents must be a+x, not writable by others

# ---------------------------------------------------------------- packages --
PKGS="slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
NEED="munged mungekey slurmctld slurmd slurmdbd sbatch srun sinfo sacct sacctmgr scontrol"
missing() {
    local b
    for b in $NEED; do PATH=$PATH:/usr/sbin:/sbin command -v "$b" >/dev/null || { echo "$b"; return 0; }; done
    PATH=$PATH:/usr/sbin:/sbin command -v mariadbd >/dev/null || PATH=$PATH:/usr/sbin:/sbin command -v mysqld >/dev/null || { echo mariadbd; return 0; }
    return 1
}
export PATH=$PATH:/usr/sbin:/sbin
if m=$(missing); then
    echo "cluster_up.sh: '$m' not found, installing: $PKGS" >&2
    command -v apt-get >/dev/null || die "'$m' is missing and apt-get is not available to install: $PKGS"
    # Do not let the packages' init scripts start system-wide daemons.
    RC_POLICY=/usr/sbin/policy-rc.d; made_policy=0
    if [[ ! -e $RC_POLICY ]]; then printf '#!/bin/sh\nexit 101\n' >"$RC_POLICY" && chmod 755 "$RC_POLICY" && made_policy=1; fi
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PKGS; } >"$DIR/apt.log" 2>&1
    rc=$?
    [[ $made_policy -eq 1 ]] && rm -f "$RC_POLICY"
    if [[ $rc -ne 0 ]] || m=$(missing); then
        tail -n 20 "$DIR/apt.log" >&2
        die "could not install the SLURM packages ($PKGS); see $DIR/apt.log"
    fi
fi
MARIADBD=$(command -v mariadbd || command -v mysqld)
INSTALL_DB=$(command -v mariadb-install-db || command -v mysql_install_db) || die "mariadb-install-db not found"
MYSQL=$(command -v mariadb || command -v mysql) || die "mariadb client not found"

# ------------------------------------------------------------------ layout --
NODE=$HOSTNAME_S
CLUSTER=suitetest
LOG=$DIR/log
mkdir -p "$LOG" "$DIR/munge" "$DIR/state" "$DIR/spool/slurmd.$NODE" "$DIR/run" || die "cannot create folders in $DIR"
chmod 0755 "$DIR/munge"
: >"$DIR/pids"

# Free TCP ports on 127.0.0.1, chosen now so we never clash with another cluster.
read -r CTLD_PORT SLURMD_PORT DBD_PORT DB_PORT < <(python3 - <<'EOF' 2>/dev/null || echo
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
EOF
)
if [[ -z ${DB_PORT:-} ]]; then   # no python3: random ports not currently listening
    used=$(ss -Htan 2>/dev/null | awk '{print $4}' | sed 's/.*://' | sort -u)
    pick() { local p; while :; do p=$((20000 + RANDOM % 40000)); grep -qx "$p" <<<"$used" || { echo $p; used+=$'\n'$p; return; }; done; }
    CTLD_PORT=$(pick); SLURMD_PORT=$(pick); DBD_PORT=$(pick); DB_PORT=$(pick)
fi

MUNGE_SOCK=$DIR/munge/munge.sock
DB_SOCK=$DIR/run/mysqld.sock
DB_PASS=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')

STARTED=()   # names, in start order, for error reporting
start() {    # start NAME LOGFILE CMD... : run CMD in the background, record its PID
    local name=$1 out=$2; shift 2
    "$@" </dev/null >>"$out" 2>&1 &
    echo "$name $!" >>"$DIR/pids"
    STARTED+=("$name")
}
fail() {     # fail DAEMON LOGFILE... : report, stop everything, exit 1
    local who=$1 f; shift
    echo "cluster_up.sh: FAILED: $who did not come up (DIR=$DIR)" >&2
    for f in "$@"; do
        [[ -s $f ]] && { echo "---- tail of $f ----" >&2; tail -n 25 "$f" >&2; }
    done
    bash "$HERE/cluster_down.sh" "$DIR" >&2 || true
    exit 1
}
alive() {   # alive NAME : the daemon we started as NAME is running (not a zombie)
    local pid st; pid=$(awk -v n="$1" '$1==n {print $2}' "$DIR/pids")
    [[ -n $pid ]] && st=$(cat "/proc/$pid/stat" 2>/dev/null) && [[ ${st##*) } != Z* ]]
}
waitfor() {  # waitfor SECONDS DAEMON CMD... : poll CMD until it succeeds while DAEMON lives
    local secs=$1 who=$2 end; shift 2; end=$(( $(date +%s) + secs ))
    while (( $(date +%s) < end )); do
        "$@" >/dev/null 2>&1 && return 0
        alive "$who" || return 1
        sleep 0.3
    done
    return 1
}

# ------------------------------------------------------------------- munge --
mungekey --create --keyfile="$DIR/munge/munge.key" --force >/dev/null 2>&1 ||
    { dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none; }
chmod 0600 "$DIR/munge/munge.key"
start munged "$LOG/munged.out" munged -F \
    --socket="$MUNGE_SOCK" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$LOG/munged.log" \
    --seed-file="$DIR/munge/munged.seed"
waitfor 20 munged bash -c "munge -n -S '$MUNGE_SOCK' | unmunge -S '$MUNGE_SOCK'" ||
    fail munged "$LOG/munged.out" "$LOG/munged.log"

# ----------------------------------------------------------------- mariadb --
"$INSTALL_DB" --no-defaults --datadir="$DIR/mysql" --user=root \
    --auth-root-authentication-method=socket --skip-test-db --skip-name-resolve \
    >"$LOG/mariadb-install.log" 2>&1 || fail mariadb-install-db "$LOG/mariadb-install.log"
start mariadbd "$LOG/mariadbd.out" "$MARIADBD" --no-defaults --user=root \
    --datadir="$DIR/mysql" --socket="$DB_SOCK" --pid-file="$DIR/run/mysqld.pid" \
    --log-error="$LOG/mariadbd.log" --bind-address=127.0.0.1 --port="$DB_PORT" \
    --skip-name-resolve --innodb-buffer-pool-size=128M --innodb-log-file-size=64M \
    --innodb-lock-wait-timeout=900 --max-allowed-packet=16M
sql() { "$MYSQL" --no-defaults --socket="$DB_SOCK" -uroot "$@"; }
waitfor 60 mariadbd sql -e 'SELECT 1' || fail mariadbd "$LOG/mariadbd.out" "$LOG/mariadbd.log"
sql >"$LOG/mariadb-setup.log" 2>&1 <<EOF || fail "mariadb (user setup)" "$LOG/mariadb-setup.log"
CREATE DATABASE slurm_acct_db;
CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF

# ----------------------------------------------------------- slurm configs --
# Hardware as slurmd itself detects it (avoids "Low socket*core*thread count").
HW=$(slurmd -C 2>/dev/null | head -n 1)
hw() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$HW"; }
CPUS=$(hw CPUs); CPUS=${CPUS:-$(nproc)}
TOPO=""
[[ -n $(hw SocketsPerBoard) && -n $(hw CoresPerSocket) && -n $(hw ThreadsPerCore) ]] &&
    TOPO="Boards=$(hw Boards) SocketsPerBoard=$(hw SocketsPerBoard) CoresPerSocket=$(hw CoresPerSocket) ThreadsPerCore=$(hw ThreadsPerCore)"
AVAIL_MB=$(awk '/^MemAvailable:/ {print int($2/1024)}' /proc/meminfo)
MEM_MB=$(( AVAIL_MB * 9 / 10 )); (( MEM_MB < 100 )) && MEM_MB=100

cat >"$DIR/slurmdbd.conf" <<EOF
# generated by tests/slurm/cluster_up.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
chown root:root "$DIR/slurmdbd.conf"; chmod 0600 "$DIR/slurmdbd.conf"

: >"$DIR/plugstack.conf"   # keep /etc/slurm/plugstack.conf (and its SPANK plugins) out
cat >"$DIR/slurm.conf" <<EOF
# generated by tests/slurm/cluster_up.sh
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
# cred_expire (default 120 s) is also how long a requeued job is held back.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK,cred_expire=$CRED_EXPIRE
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd.%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$DIR/plugstack.conf
MailProg=/bin/true
# Accounting through our slurmdbd.  AccountingStoragePass=<munge socket> makes
# slurmctld use our munged for the dbd connection (otherwise: "we have no TRES from it").
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCK
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
# No systemd, no cgroups.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2,batch_sched_delay=0
MpiDefault=none
ReturnToService=2
JobRequeue=1
SlurmctldTimeout=10
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MessageTimeout=10
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS $TOPO RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

cat >"$DIR/env" <<EOF
export SLURM_CONF=$DIR/slurm.conf
export SLURM_CLUSTER_DIR=$DIR
export SLURM_CLUSTER_NAME=$CLUSTER
export SLURM_CLUSTER_NODE=$NODE
export SLURM_CLUSTER_PARTITION=debug
export PATH=\$PATH:/usr/sbin:/sbin
EOF
export SLURM_CONF=$DIR/slurm.conf

# ---------------------------------------------------------------- slurmdbd --
start slurmdbd "$LOG/slurmdbd.out" slurmdbd -D   # finds slurmdbd.conf next to $SLURM_CONF
waitfor 60 slurmdbd sacctmgr -n list cluster ||
    fail slurmdbd "$LOG/slurmdbd.out" "$LOG/slurmdbd.log"
sacctmgr -i add cluster "$CLUSTER" >"$LOG/sacctmgr.log" 2>&1 ||
    grep -qi "already exists" "$LOG/sacctmgr.log" || fail "sacctmgr add cluster" "$LOG/sacctmgr.log" "$LOG/slurmdbd.log"

# ------------------------------------------------------- slurmctld, slurmd --
start slurmctld "$LOG/slurmctld.out" slurmctld -D -f "$DIR/slurm.conf"
waitfor 30 slurmctld scontrol ping ||
    fail slurmctld "$LOG/slurmctld.out" "$LOG/slurmctld.log"
start slurmd "$LOG/slurmd.out" slurmd -D -f "$DIR/slurm.conf" -N "$NODE"

node_idle() { [[ $(sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null) == idle ]]; }
end=$(( T0 + UP_TIMEOUT )); ok=0
while (( $(date +%s) < end )); do
    for d in munged mariadbd slurmdbd slurmctld slurmd; do
        alive $d || fail $d "$LOG/$d.out" "$LOG/$d.log"
    done
    if node_idle && sacct -n -a -X -S now-1hour >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.5
done
if [[ $ok -ne 1 ]]; then
    echo "cluster_up.sh: timed out after ${UP_TIMEOUT}s; node state: $(sinfo -h -N -o '%N %t %E' 2>&1)" >&2
    node_idle && fail "sacct/slurmdbd" "$LOG/slurmdbd.log" "$LOG/slurmctld.log"
    fail slurmd "$LOG/slurmd.out" "$LOG/slurmd.log" "$LOG/slurmctld.log"
fi
echo "SLURM cluster up in $(( $(date +%s) - T0 )) s: $DIR"
