#!/usr/bin/env bash
# A one-node Slurm cluster on 127.0.0.1 for the `slurm` tests: installs Debian's slurm-wlm and
# munge if missing, writes a minimal slurm.conf sized to this host, starts munged, slurmctld and
# slurmd, and waits until `sinfo` shows the node idle. .ci/slurm-down.sh stops what this started.
# Run as root. It refuses to overwrite a slurm.conf it did not write (a real cluster's).
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by hparam-runner .ci/slurm-up.sh"
STATE=/var/spool/hpr-slurm
LOGS=/var/log/hpr-slurm

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends slurm-wlm munge
fi

if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    echo "slurm-up: $CONF exists and was not written by this script; not touching it" >&2
    exit 2
fi

# munge: a key (the package's postinst usually made one), then the daemon, as the munge user.
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key && chmod 0755 /run/munge
if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null
fi

# This host's CPUs and memory, as slurmd itself detects them; the node is called localhost.
read -r CPUS MEM < <(slurmd -C | awk '/^NodeName/ {for (i = 1; i <= NF; i++) {split($i, kv, "="); v[kv[1]] = kv[2]} print v["CPUs"], v["RealMemory"]}')
mkdir -p "$STATE/ctld" "$STATE/d" "$LOGS" /etc/slurm
cat > "$CONF" <<CONF
$MARK
ClusterName=hpr
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

if ! scontrol ping 2>/dev/null | grep -q UP; then
    slurmctld -c    # -c: a clean start, no jobs or node state from an earlier run
fi
if ! pgrep -F "$STATE/slurmd.pid" >/dev/null 2>&1; then
    slurmd -N localhost
fi

for _ in $(seq 60); do
    if [ "$(sinfo -h -n localhost -o %t 2>/dev/null)" = "idle" ]; then
        echo "slurm-up: node localhost idle ($CPUS CPUs, $MEM MB), partition debug"
        exit 0
    fi
    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    sleep 1
done
echo "slurm-up: the node did not become idle; sinfo says:" >&2
sinfo -N -l >&2 || true
tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
exit 1
