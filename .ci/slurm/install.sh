#!/usr/bin/env bash
# Install a single-node SLURM test cluster's packages (Debian/Ubuntu: slurm-wlm + munge) when missing.
# Idempotent: returns at once when the binaries are already there.
# Exit status: 0 = installed (or already present); 3 = cannot install here (not root / no apt-get): the
# SLURM tests then skip with a reason. Any other failure (apt error) is reported with its status.
set -euo pipefail

have_all() {
  local b
  for b in slurmctld slurmd munged sbatch squeue sinfo scontrol srun; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || return 1
  done
}

version() { dpkg-query -W -f '${Package} ${Version}  ' slurm-wlm munge 2>/dev/null || slurmd -V; }

if have_all; then
  echo "slurm install: already present: $(version)"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "slurm install: not root; cannot install slurm-wlm/munge" >&2
  exit 3
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "slurm install: no apt-get on this machine; cannot install slurm-wlm/munge" >&2
  exit 3
fi

start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
# apt-get update only when the package is not known yet (a fresh container has empty lists)
if ! apt-cache show slurm-wlm >/dev/null 2>&1; then
  apt-get update -qq
fi
if ! apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; then
  echo "slurm install: apt-get install failed; retrying after apt-get update" >&2
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
have_all || { echo "slurm install: packages installed but binaries missing" >&2; exit 1; }
echo "slurm install: $(version)installed in $(( $(date +%s) - start )) s"
