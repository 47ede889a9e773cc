#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for testing `snakemake --profile profiles/slurm`
# (tests/test_slurm.py). Debian/Ubuntu, run as root; no systemd needed (daemons are started
# directly and stopped by their PID files).
#
#   tests/slurm/slurm_localhost.sh start    # install packages if missing, write config, start, wait until idle
#   tests/slurm/slurm_localhost.sh status   # daemons and `sinfo`
#   tests/slurm/slurm_localhost.sh stop     # stop the daemons this script started
#
# The cluster: one node (this host, all its CPUs, 85 % of its memory) in two partitions,
# `cpu` (default) and `gpu`, with one fake GPU (gres gpu:fake:1 backed by /dev/null), so that
# `--gpus=1` requests are scheduled without real hardware.
#
# Environment:
#   ACCOUNTING=1      also install and start MariaDB + slurmdbd so that `sacct` works (off by default:
#                     it takes longer to install; without it profiles/slurm must use
#                     `slurm-status-command: squeue`, which works because MinJobAge >= 120 below)
#   SLURM_SKIP_INSTALL=1  never call apt-get (fail if the packages are missing)
#   FORCE=1           overwrite an /etc/slurm/slurm.conf this script did not write (refused otherwise)
#   DBPASS            MariaDB password of the slurm user (ACCOUNTING=1 only)
#
# Facts this relies on (Slurm 22.05 from Debian 12, snakemake 9 + executor-plugin-slurm 2.8):
# - without accounting, the plugin's default status command (`sacct`) never sees jobs and
#   snakemake waits forever; `squeue` is used instead and the plugin only accepts it when
#   MinJobAge >= 120 (otherwise it silently goes back to `sacct`);
# - without DefMemPerCPU every job takes all the node's memory and jobs run one at a time;
# - Slurm 22.05 drops GPUs without a device file ("Removing file-less GPU"): File=/dev/null.
set -euo pipefail

ACCOUNTING=${ACCOUNTING:-0}
DBPASS=${DBPASS:-slurmdbpass}
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 * 85 / 100 ))
CONF_DIR=/etc/slurm
MARK="# Written by medsynth tests/slurm/slurm_localhost.sh"
PIDS=(/run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid /run/mysqld/mysqld.pid /run/munge/munged.pid)

log() { echo "[slurm_localhost] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for <seconds> <command...>
  local n=$1; shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  log "timeout after ${n}s: $*"; return 1
}

install_pkgs() {
  local pkgs=(slurmctld slurmd slurm-client munge)
  [ "$ACCOUNTING" = 1 ] && pkgs+=(slurmdbd mariadb-server)
  local missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "${SLURM_SKIP_INSTALL:-0}" = 1 ] && die "packages missing and SLURM_SKIP_INSTALL=1: ${missing[*]}"
  command -v apt-get >/dev/null || die "apt-get not found (Debian/Ubuntu only); missing: ${missing[*]}"
  log "installing ${missing[*]}"
  # Keep the packages' postinst scripts from starting the services (no systemd here, and the
  # daemons are started below with this script's config). Only for this install: a
  # policy-rc.d we created is removed afterwards.
  local created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; created_policy=1
  fi
  local rc=0
  local apt_opts=(-qq -o Acquire::Retries=2 -o Acquire::http::Timeout=30)  # fail, not hang, when offline
  { apt-get update "${apt_opts[@]}" && DEBIAN_FRONTEND=noninteractive apt-get install -y "${apt_opts[@]}" --no-install-recommends "${missing[@]}"; } || rc=$?
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || die "apt-get install failed ($rc)"
}

slurm_conf() {
  if [ "$ACCOUNTING" = 1 ]; then
    ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux"
  else
    ACCT="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  fi
  cat <<EOF
${MARK}: single-node test cluster.
ClusterName=localcluster
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# no cgroups in containers
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default, every job grabs all node memory and jobs run one at a time
DefMemPerCPU=1000
ReturnToService=2
# finished jobs stay visible to squeue this long; snakemake-executor-plugin-slurm accepts
# squeue as status command only with MinJobAge >= 120
MinJobAge=300
GresTypes=gpu
JobCompType=jobcomp/none
${ACCT}
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} Gres=gpu:fake:1 State=UNKNOWN
PartitionName=cpu Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=${HOST} MaxTime=INFINITE State=UP
EOF
}

write_conf() {  # -> returns 0 when the config changed
  if [ -s "$CONF_DIR/slurm.conf" ] && ! head -1 "$CONF_DIR/slurm.conf" | grep -qF "$MARK" && [ "${FORCE:-0}" != 1 ]; then
    die "$CONF_DIR/slurm.conf exists and was not written by this script (a real cluster?); not touching it (FORCE=1 overrides)"
  fi
  mkdir -p "$CONF_DIR" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
  chown slurm:slurm /var/lib/slurm/slurmctld /var/log/slurm 2>/dev/null || true
  local new; new=$(slurm_conf)
  local changed=1
  if [ -f "$CONF_DIR/slurm.conf" ] && [ "$(cat "$CONF_DIR/slurm.conf")" = "$new" ]; then changed=0; fi
  printf '%s\n' "$new" > "$CONF_DIR/slurm.conf"
  cat > "$CONF_DIR/gres.conf" <<EOF
AutoDetect=off
NodeName=${HOST} Name=gpu Type=fake File=/dev/null
EOF
  if [ "$ACCOUNTING" = 1 ]; then
    cat > "$CONF_DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=${DBPASS}
StorageLoc=slurm_acct_db
EOF
    chown slurm:slurm "$CONF_DIR/slurmdbd.conf"; chmod 600 "$CONF_DIR/slurmdbd.conf"
  fi
  [ "$changed" = 1 ]
}

node_idle() { sinfo -h -o %T | grep -Eq '^(idle|mixed|allocated)'; }

start() {
  [ "$(id -u)" = 0 ] || die "run as root (installs packages and starts system daemons)"
  install_pkgs
  if write_conf && alive /run/slurmctld.pid; then
    log "slurm.conf changed: restarting the daemons"; stop
  fi
  mkdir -p /run/munge && chown munge:munge /run/munge
  if ! alive /run/munge/munged.pid; then
    [ -s /etc/munge/munge.key ] || /usr/sbin/mungekey --create   # Debian's postinst normally made one
    runuser -u munge -- /usr/sbin/munged                          # -> /run/munge/munged.pid
  fi
  wait_for 30 bash -c 'munge -n | unmunge' || die "munged does not answer"
  if [ "$ACCOUNTING" = 1 ]; then
    if ! alive /run/mysqld/mysqld.pid; then
      mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
      setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 \
        --pid-file=/run/mysqld/mysqld.pid >/var/log/slurm/mariadb.out 2>&1 </dev/null &
    fi
    wait_for 60 mariadb -e 'select 1' || die "mariadb did not start"
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '${DBPASS}';
                CREATE DATABASE IF NOT EXISTS slurm_acct_db;
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    alive /run/slurmdbd.pid || /usr/sbin/slurmdbd                 # -> /run/slurmdbd.pid
    wait_for 60 sacctmgr -n show cluster || die "slurmdbd did not start"
    sacctmgr -i -Q add cluster localcluster >/dev/null 2>&1 || true
    sacctmgr -i -Q add account medsynth Description=test Organization=test >/dev/null 2>&1 || true
    sacctmgr -i -Q add user "${SUDO_USER:-root}" Account=medsynth DefaultAccount=medsynth >/dev/null 2>&1 || true
  fi
  alive /run/slurmctld.pid || /usr/sbin/slurmctld                   # -> /run/slurmctld.pid
  wait_for 60 bash -c 'scontrol ping | grep -q UP' || die "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
  alive /run/slurmd.pid || /usr/sbin/slurmd                         # -> /run/slurmd.pid
  if ! wait_for 30 node_idle; then
    scontrol update nodename="$HOST" state=resume 2>/dev/null || true
    wait_for 60 node_idle || die "node not idle (see /var/log/slurm/slurmd.log): $(sinfo -h -o '%T %E' | head -1)"
  fi
  sinfo -o "%P %a %D %T %N %G"
}

stop() {
  for f in "${PIDS[@]}"; do
    alive "$f" || continue
    local pid; pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    log "stopped $f ($pid)"
  done
}

status() {
  local rc=0
  for f in "${PIDS[@]}"; do
    if alive "$f"; then echo "running  $f ($(cat "$f"))"; else echo "stopped  $f"; fi
  done
  if alive /run/slurmctld.pid; then sinfo -o "%P %a %D %T %N %G" || rc=1; else rc=3; fi
  return $rc
}

case "${1:-}" in
  start|stop|status) "$1" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
