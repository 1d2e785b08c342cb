#!/usr/bin/env bash
# A real SLURM cluster (with accounting) and a real MLflow tracking server, on loopback, for the
# cluster tests (tests/cluster/cluster_tests.py) and for trying the profile by hand.
#
#   tests/cluster/cluster.sh install                     # apt-get what is missing (root)
#   tests/cluster/cluster.sh start-slurm ACCOUNT CPU_PARTITION GPU_PARTITION
#   tests/cluster/cluster.sh stop-slurm
#   tests/cluster/cluster.sh start-mlflow PYTHON_BIN_DIR # PostgreSQL + `mlflow server`
#   tests/cluster/cluster.sh stop-mlflow
#   tests/cluster/cluster.sh env                         # the exports a client needs
#
# SLURM: munged, mariadbd (a private data directory), slurmdbd (accounting in MariaDB),
# slurmctld and slurmd (Debian's slurm-wlm 22.05), one node. The node stands in for a GPU node:
# it declares 8 CPUs (the profile's set-threads; SlurmdParameters=config_overrides lets slurmd
# declare more than the 2 cores it has), the machine's memory, and one `gpu` GRES without a
# device file, so the profile's `gpu: 1` jobs are scheduled; the tests run on the CPU.
# No systemd and no cgroups in a container: daemons are started directly, with
# proctrack/linuxproc, task/none and jobacct_gather/linux.
#
# MLflow: PostgreSQL 15 (Debian's postgresql, a private cluster on 127.0.0.1:$PG_PORT), a
# database and user `mlflow`, and `mlflow server` with that backend store and server-side
# artifacts (--serve-artifacts --artifacts-destination) on 127.0.0.1:$MLFLOW_PORT.
#
# Everything lives under $CLUSTER_STATE (default /tmp/subspace-fsl-cluster); stop-* kill the
# daemons by their pid files and delete that state.
set -euo pipefail

STATE=${CLUSTER_STATE:-/tmp/subspace-fsl-cluster}
CLUSTER_NAME=${CLUSTER_NAME:-fsltest}
SLURMCTLD_PORT=${SLURMCTLD_PORT:-16817}
SLURMD_PORT=${SLURMD_PORT:-16818}
SLURMDBD_PORT=${SLURMDBD_PORT:-16819}
MARIADB_PORT=${MARIADB_PORT:-13306}
PG_PORT=${PG_PORT:-15432}
MLFLOW_PORT=${MLFLOW_PORT:-15000}
NODE_CPUS=${NODE_CPUS:-8}
DB_PASS=subspacefsl   # loopback-only throw-away databases
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true; }
PG_BIN=$(pg_bin)
HOST=$(hostname -s)

log() { echo "[cluster] $*" >&2; }
die() { echo "[cluster] error: $*" >&2; exit 1; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq 1 $((seconds * 2))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  die "$what did not come up within ${seconds}s (logs in $STATE/log)"
}

start_daemon() {  # start_daemon NAME COMMAND... : detached, output to $STATE/log/NAME.out
  local name=$1; shift
  setsid "$@" >"$STATE/log/$name.out" 2>&1 < /dev/null &
  echo $! >"$STATE/$name.pid"
}

stop_daemon() {  # stop_daemon NAME : SIGTERM, then SIGKILL after 20 s
  local pidfile=$STATE/$1.pid pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# --- install -------------------------------------------------------------------------------

install() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v slurmdbd >/dev/null || missing+=(slurmdbd)
  command -v munged >/dev/null || missing+=(munge)
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
  [[ -n $PG_BIN && -x $PG_BIN/initdb ]] || missing+=(postgresql)
  if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; run as root (apt-get install)"
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=900 update -qq
    apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}"
  fi
  [[ -f /etc/munge/munge.key ]] || { mkdir -p /etc/munge; mungekey --create --keyfile /etc/munge/munge.key; }
}

# --- SLURM -----------------------------------------------------------------------------------

write_slurm_conf() {
  local account=$1 cpu_partition=$2 gpu_partition=$3 mem_mb
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024) - 512}' /proc/meminfo)
  mkdir -p "$STATE"/{etc,log,slurmctld,slurmd,mysql}
  cat >"$STATE/etc/slurm.conf" <<EOF
# one-node loopback test cluster (tests/cluster/cluster.sh)
ClusterName=$CLUSTER_NAME
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.daemon.pid
SlurmdPidFile=$STATE/slurmd.daemon.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# no cgroups in a container
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
# accounting: slurmdbd -> MariaDB (sacct answers; the executor plugin reads job states there)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$SLURMDBD_PORT
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
GresTypes=gpu
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=30
MinJobAge=600
NodeName=node1 NodeAddr=127.0.0.1 NodeHostname=$HOST CPUs=$NODE_CPUS RealMemory=$mem_mb Gres=gpu:1 State=UNKNOWN
PartitionName=$cpu_partition Nodes=node1 Default=YES MaxTime=INFINITE State=UP
PartitionName=$gpu_partition Nodes=node1 MaxTime=INFINITE State=UP
EOF
  # gres/gpu wants a device file: an empty stand-in (jobs see CUDA_VISIBLE_DEVICES=0, no GPU)
  mkdir -p "$STATE/dev"
  touch "$STATE/dev/nvidia0"
  cat >"$STATE/etc/gres.conf" <<EOF
AutoDetect=off
NodeName=node1 Name=gpu File=$STATE/dev/nvidia0
EOF
  cat >"$STATE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$SLURMDBD_PORT
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/slurmdbd.daemon.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MARIADB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$STATE/etc/slurmdbd.conf"
  echo "$account" >"$STATE/account"
  # Also at Debian's default place: snakemake's jobstep plugin drops SLURM_* variables
  # (SLURM_CONF too) before it calls srun inside a job, so srun must find /etc/slurm/slurm.conf
  mkdir -p /etc/slurm
  local name
  for name in slurm.conf gres.conf slurmdbd.conf; do
    if [[ -e /etc/slurm/$name && $(readlink "/etc/slurm/$name") != "$STATE/etc/$name" ]]; then
      die "/etc/slurm/$name exists and is not this test cluster's: refusing to replace it"
    fi
    ln -sfn "$STATE/etc/$name" "/etc/slurm/$name"
  done
}

start_munge() {
  if [[ -S /run/munge/munge.socket.2 ]] && munge -n </dev/null >/dev/null 2>&1; then
    log "munged already running"; return 0
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  munged --force --pid-file="$STATE/munged.daemon.pid"
  touch "$STATE/munged.ours"
  wait_for 20 munged sh -c 'munge -n </dev/null | unmunge'
}

start_mariadb() {
  mariadb-install-db --user=root --datadir="$STATE/mysql" --skip-test-db \
    --auth-root-authentication-method=socket >"$STATE/log/mariadb-install.out" 2>&1
  start_daemon mariadbd mariadbd --user=root --datadir="$STATE/mysql" --socket="$STATE/mysql.sock" \
    --port="$MARIADB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
    --pid-file="$STATE/mariadbd.daemon.pid" --innodb-lock-wait-timeout=900
  wait_for 60 mariadbd mariadb --socket="$STATE/mysql.sock" -u root -e 'SELECT 1'
  mariadb --socket="$STATE/mysql.sock" -u root <<EOF
CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
}

start_slurm() {
  [[ $# == 3 ]] || die "usage: start-slurm ACCOUNT CPU_PARTITION GPU_PARTITION"
  install
  [[ ! -e $STATE/etc/slurm.conf ]] || die "$STATE is in use: run stop-slurm first"
  write_slurm_conf "$@"
  export SLURM_CONF=$STATE/etc/slurm.conf
  start_munge
  start_mariadb
  start_daemon slurmdbd slurmdbd -D
  wait_for 60 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
  start_daemon slurmctld slurmctld -D -i
  wait_for 60 slurmctld scontrol ping
  start_daemon slurmd slurmd -D -N node1
  wait_for 60 "slurmd (node1 idle)" sh -c 'sinfo -h -n node1 -o %t | grep -qx idle'
  sacctmgr -i add account "$1" Cluster="$CLUSTER_NAME" Description=test Organization=test >/dev/null
  sacctmgr -i add user "$(id -un)" Account="$1" Cluster="$CLUSTER_NAME" >/dev/null
  log "SLURM cluster $CLUSTER_NAME up: account $1, partitions $2 and $3 (SLURM_CONF=$SLURM_CONF)"
}

stop_slurm() {
  export SLURM_CONF=$STATE/etc/slurm.conf
  if [[ -f $SLURM_CONF ]] && [[ -f $STATE/slurmctld.pid ]]; then
    scancel --full --user "$(id -un)" 2>/dev/null || true
  fi
  stop_daemon slurmd
  stop_daemon slurmctld
  stop_daemon slurmdbd
  stop_daemon mariadbd
  if [[ -f $STATE/munged.ours ]]; then
    [[ -f $STATE/munged.daemon.pid ]] && kill "$(cat "$STATE/munged.daemon.pid")" 2>/dev/null || true
    rm -f "$STATE/munged.ours"
  fi
  local name
  for name in slurm.conf gres.conf slurmdbd.conf; do
    [[ $(readlink "/etc/slurm/$name") != "$STATE/etc/$name" ]] || rm -f "/etc/slurm/$name"
  done
  rm -rf "$STATE"/{etc,dev,slurmctld,slurmd,mysql,mysql.sock,account,log/slurm*,log/maria*}
  log "SLURM cluster stopped"
}

# --- MLflow server on PostgreSQL -----------------------------------------------------------

start_mlflow() {
  [[ $# == 1 ]] || die "usage: start-mlflow PYTHON_BIN_DIR (where mlflow and psycopg2 are)"
  local bin=$1
  install
  PG_BIN=$(pg_bin)  # known only once postgresql is installed
  [[ -x $bin/mlflow ]] || die "$bin/mlflow not found"
  "$bin/python" -c 'import psycopg2' 2>/dev/null || die "psycopg2 missing: pip install -e '.[test]'"
  [[ ! -e $STATE/pg ]] || die "$STATE/pg is in use: run stop-mlflow first"
  mkdir -p "$STATE"/{pg,pgsock,log,mlartifacts}
  touch "$STATE/log/postgres.log"
  chown postgres "$STATE/pg" "$STATE/pgsock" "$STATE/log/postgres.log"
  chmod 700 "$STATE/pg"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$STATE/pg" -A trust -U postgres \
    >"$STATE/log/initdb.out" 2>&1
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$STATE/pg" -l "$STATE/log/postgres.log" -w \
    -o "-p $PG_PORT -k $STATE/pgsock -c listen_addresses=127.0.0.1 -c max_connections=200" start \
    >/dev/null
  psql -h "$STATE/pgsock" -p "$PG_PORT" -U postgres -q -c "CREATE USER mlflow PASSWORD '$DB_PASS'"
  psql -h "$STATE/pgsock" -p "$PG_PORT" -U postgres -q -c "CREATE DATABASE mlflow OWNER mlflow"
  start_daemon mlflow "$bin/mlflow" server \
    --backend-store-uri "postgresql://mlflow:$DB_PASS@127.0.0.1:$PG_PORT/mlflow" \
    --serve-artifacts --artifacts-destination "$STATE/mlartifacts" \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 4
  wait_for 120 "mlflow server" "$bin/python" -c \
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$MLFLOW_PORT/health')"
  log "MLflow server up: http://127.0.0.1:$MLFLOW_PORT (PostgreSQL on 127.0.0.1:$PG_PORT)"
}

stop_mlflow() {
  # mlflow server's workers are its children: end the whole session it leads
  if [[ -f $STATE/mlflow.pid ]]; then
    kill -- "-$(cat "$STATE/mlflow.pid")" 2>/dev/null || true
  fi
  stop_daemon mlflow
  if [[ -f $STATE/pg/postmaster.pid ]]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$STATE/pg" -m fast -w stop >/dev/null || true
  fi
  rm -rf "$STATE"/{pg,pgsock,mlartifacts,log/postgres.log,log/initdb.out,log/mlflow.out}
  log "MLflow server stopped"
}

print_env() {
  echo "export SLURM_CONF=$STATE/etc/slurm.conf"
  echo "export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT"
}

case ${1:-} in
  install) install ;;
  start-slurm) shift; start_slurm "$@" ;;
  stop-slurm) stop_slurm ;;
  start-mlflow) shift; start_mlflow "$@" ;;
  stop-mlflow) stop_mlflow ;;
  env) print_env ;;
  *) die "usage: $0 install|start-slurm ACCOUNT CPU_PART GPU_PART|stop-slurm|start-mlflow BIN|stop-mlflow|env" ;;
esac
