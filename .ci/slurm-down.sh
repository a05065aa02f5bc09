#!/usr/bin/env bash
# Stops what .ci/slurm-up.sh started (slurmd, slurmctld, munged) and removes its slurm.conf.
set -uo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by hparam-runner .ci/slurm-up.sh"
STATE=/var/spool/hpr-slurm

if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    echo "slurm-down: $CONF was not written by .ci/slurm-up.sh; leaving Slurm alone" >&2
    exit 0
fi
scancel --full --quiet --user root 2>/dev/null || true
for daemon in slurmd slurmctld; do
    pidfile="$STATE/$daemon.pid"
    if [ -s "$pidfile" ]; then
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
done
if [ -s /run/munge/munged.pid ]; then
    kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
fi
rm -f "$CONF"
echo "slurm-down: stopped"
