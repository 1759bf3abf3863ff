#!/usr/bin/env bash
# A single-node SLURM test cluster (slurm-wlm 22.05 + munge, Debian), run as plain root processes:
# no systemd, no cgroups, no accounting database. For tests/test_slurm.py and CI (.ci/run).
#
#   .ci/slurm/cluster.sh start     # idempotent; prints sinfo when the node is idle
#   .ci/slurm/cluster.sh status    # exit 0 when up
#   .ci/slurm/cluster.sh stop      # cancels the cluster's jobs, stops ITS daemons by PID (pid files)
#
# Everything lives under $SFW_SLURM_BASE (default /var/tmp/sfw-slurm): munge key + socket, state, spool,
# logs, pid files, and `env`, which tells the tests how to reach the cluster (SLURM_CONF, partition, ...).
#
# Config location: /etc/slurm/slurm.conf (the default path) unless that file exists and belongs to another
# cluster (no marker line below), or SFW_SLURM_ISOLATED=1. Then the config is $SFW_SLURM_BASE/slurm.conf,
# clients need SLURM_CONF, and $SFW_SLURM_BASE/bin holds an `srun` wrapper that must come first on PATH:
# snakemake-executor-plugin-slurm-jobstep removes SLURM_CONF before its inner `srun`, which would otherwise
# talk to the default cluster. Ports are non-default (16817/16818) so another SLURM on the host is unaffected.
#
# Settings (env): SFW_SLURM_BASE, SFW_SLURM_ISOLATED=1, SFW_SLURM_PORT (controller; slurmd uses +1),
#                 SFW_SLURM_REALMEM (MB; default 90% of MemTotal), SFW_SLURM_PARTITION (default sfwtest),
#                 SFW_SLURM_FAKE_GPUS (default 1: GPUs the node advertises to the scheduler, GRES backed by
#                 /dev/null, so that `sbatch --gpus=1` jobs are scheduled (there is no CUDA device); 0 = none).
set -euo pipefail

BASE=${SFW_SLURM_BASE:-/var/tmp/sfw-slurm}
PORT=${SFW_SLURM_PORT:-16817}
PARTITION=${SFW_SLURM_PARTITION:-sfwtest}
FAKE_GPUS=${SFW_SLURM_FAKE_GPUS:-1}
CLUSTER=sfwtest
MARK="# sfw-local-test-cluster: written by .ci/slurm/cluster.sh (removed by 'cluster.sh stop')"
DEFAULT_CONF=/etc/slurm/slurm.conf
case "$BASE" in /?*/?*) ;; *) echo "SFW_SLURM_BASE must be an absolute path below a directory, not '$BASE'" >&2; exit 2 ;; esac
DAEMONS=(slurmd slurmctld munged)       # stop order
SBIN=/usr/sbin

log() { echo "slurm cluster: $*" >&2; }

choose_conf() {
  # the config of a running cluster wins (recorded at start)
  if [ -f "$BASE/env" ]; then
    CONF=$(sed -n 's/^SLURM_CONF=//p' "$BASE/env")
    [ -n "$CONF" ] && return
  fi
  if [ "${SFW_SLURM_ISOLATED:-0}" = 1 ]; then
    CONF=$BASE/slurm.conf
  elif [ -f "$DEFAULT_CONF" ] && ! grep -qF "$MARK" "$DEFAULT_CONF"; then
    log "$DEFAULT_CONF belongs to another cluster; using an isolated config in $BASE"
    CONF=$BASE/slurm.conf
  else
    CONF=$DEFAULT_CONF
  fi
}

pid_of() {  # pid of our daemon $1 if alive and really that program, else nothing
  local f="$BASE/run/$1.pid" pid
  [ -f "$f" ] || return 0
  pid=$(tr -dc '0-9' <"$f")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && echo "$pid"
  return 0
}

node_state() { SLURM_CONF=$CONF timeout 10 sinfo -h -p "$PARTITION" -o %T 2>/dev/null | head -1; }

is_up() {
  local d
  for d in "${DAEMONS[@]}"; do [ -n "$(pid_of "$d")" ] || return 1; done
  case "$(node_state)" in idle*|mix*|alloc*|allocated*|completing*) return 0 ;; *) return 1 ;; esac
}

real_memory() {
  if [ -n "${SFW_SLURM_REALMEM:-}" ]; then echo "$SFW_SLURM_REALMEM"; return; fi
  awk '/^MemTotal:/ {printf "%d\n", $2 / 1024 * 0.9}' /proc/meminfo
}

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(real_memory)
  mkdir -p "$(dirname "$CONF")"
  local gres_types="" node_gres=""
  if [ "$FAKE_GPUS" -gt 0 ]; then
    gres_types="GresTypes=gpu"
    node_gres="Gres=gpu:$FAKE_GPUS"
    # fake GPUs (device file /dev/null): the scheduler can place --gpus jobs; there is no CUDA device
    printf '%s\nNodeName=localhost Name=gpu File=/dev/null Count=%s\n' "$MARK" "$FAKE_GPUS" >"$(dirname "$CONF")/gres.conf"
  else
    rm -f "$(dirname "$CONF")/gres.conf"
  fi
  cat >"$CONF" <<EOF
$MARK
# Single node, no cgroups, no accounting DB: use snakemake's --slurm-status-command squeue (MinJobAge below).
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$BASE/munge/munge.socket
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job without --mem must not take the whole node
DefMemPerCPU=1000
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# finished jobs stay visible to squeue for 10 min (snakemake --slurm-status-command squeue needs >= 120 s)
MinJobAge=600
$gres_types
NodeName=localhost NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem $node_gres State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  echo "$mem"
}

start() {
  choose_conf
  if is_up; then
    log "already running ($CONF)"
    SLURM_CONF=$CONF sinfo
    return 0
  fi
  stop_daemons quiet                     # leftovers of a half-started cluster
  local t0=$SECONDS mem
  rm -rf "$BASE/state" "$BASE/spool"     # fresh cluster: job ids start at 1, no stale jobs
  mkdir -p "$BASE"/{munge,state,spool,log,run,bin}
  chmod 755 "$BASE/munge"     # clients (any user) must reach the socket; the key stays 0400
  if [ ! -f "$BASE/munge/munge.key" ]; then
    dd if=/dev/urandom of="$BASE/munge/munge.key" bs=1 count=1024 2>/dev/null
    chmod 400 "$BASE/munge/munge.key"
  fi
  "$SBIN/munged" --force --socket="$BASE/munge/munge.socket" --key-file="$BASE/munge/munge.key" \
    --log-file="$BASE/log/munged.log" --pid-file="$BASE/run/munged.pid" --seed-file="$BASE/munge/munged.seed"
  mem=$(write_conf)
  # srun wrapper: the jobstep plugin strips SLURM_CONF before its inner srun (only matters off /etc/slurm)
  printf '#!/bin/sh\nexport SLURM_CONF=%s\nexec /usr/bin/srun "$@"\n' "$CONF" >"$BASE/bin/srun"
  chmod +x "$BASE/bin/srun"
  "$SBIN/slurmctld" -f "$CONF"
  "$SBIN/slurmd" -f "$CONF" -N localhost
  local i
  for i in $(seq 60); do
    case "$(node_state)" in idle*) break ;; esac
    sleep 0.5
  done
  if ! is_up; then
    log "did not come up within 30 s; logs:"
    tail -n 20 "$BASE"/log/*.log >&2 || true
    stop_daemons quiet
    return 1
  fi
  {
    echo "SLURM_CONF=$CONF"
    echo "SFW_SLURM_BIN=$BASE/bin"
    echo "SFW_SLURM_PARTITION=$PARTITION"
    echo "SFW_SLURM_CPUS=$(nproc)"
    echo "SFW_SLURM_REALMEM=$mem"
    echo "SFW_SLURM_FAKE_GPUS=$FAKE_GPUS"
  } >"$BASE/env"
  log "up in $((SECONDS - t0)) s: config $CONF, $(nproc) CPUs, RealMemory=$mem MB, partition $PARTITION"
  SLURM_CONF=$CONF sinfo
}

stop_daemons() {
  local d pid i
  for d in "${DAEMONS[@]}"; do
    pid=$(pid_of "$d")
    if [ -n "$pid" ]; then
      [ "${1:-}" = quiet ] || log "stopping $d (pid $pid)"
      kill "$pid" 2>/dev/null || true
      for i in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
      if [ -d "/proc/$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$BASE/run/$d.pid"
  done
}

stop() {
  choose_conf
  if [ -n "$(pid_of slurmctld)" ]; then
    # this cluster only runs test jobs: cancel whatever is left so no job step outlives the cluster
    SLURM_CONF=$CONF timeout 10 scancel --full --state=PENDING,RUNNING,SUSPENDED -p "$PARTITION" 2>/dev/null || true
    local i
    for i in $(seq 20); do
      [ -z "$(SLURM_CONF=$CONF timeout 5 squeue -h -p "$PARTITION" -t RUNNING,COMPLETING -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  stop_daemons
  rm -f "$BASE/env"
  if [ -f "$DEFAULT_CONF" ] && grep -qF "$MARK" "$DEFAULT_CONF"; then rm -f "$DEFAULT_CONF"; fi
  local gres
  gres="$(dirname "$DEFAULT_CONF")/gres.conf"
  if [ -f "$gres" ] && grep -qF "$MARK" "$gres"; then rm -f "$gres"; fi
  log "stopped"
}

status() {
  choose_conf
  local d
  for d in "${DAEMONS[@]}"; do echo "$d: ${BASE}/run/$d.pid -> $(pid_of "$d" || true)"; done
  if is_up; then
    echo "up: $CONF"
    SLURM_CONF=$CONF sinfo
    SLURM_CONF=$CONF squeue --states=all
  else
    echo "down"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
