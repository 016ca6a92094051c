#!/usr/bin/env bash
# A single-node SLURM cluster on loopback, with accounting (slurmdbd + MariaDB) so that `sacct`,
# which snakemake-executor-plugin-slurm uses for job status, works. Debian/Ubuntu, as root.
#
#   tests/cluster/slurm.sh install   # apt packages (slurmctld slurmd slurmdbd slurm-client munge
#                                    # mariadb-server), kept in the CI download cache (.ci/apt-install)
#   tests/cluster/slurm.sh start     # munge, MariaDB, slurmdbd, slurmctld, slurmd; waits until the node is idle
#   tests/cluster/slurm.sh stop      # stops every daemon it started
#
# Every step has a time limit, so a broken set-up fails instead of hanging.
set -euo pipefail

CLUSTER=bsn-test
PARTITION=debug
DB_PASSWORD=bsn-test-only   # loopback-only test database

step() { echo "[slurm] $*" >&2; }
fail() { echo "[slurm] error: $*" >&2; exit 1; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    for _ in $(seq "$limit"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
    fail "$what did not come up within ${limit}s; see /var/log/slurm/ and /var/log/mysql/"
}

install_packages() {  # through the CI's download cache (.ci/apt-install): no download next time
    [ "$(id -u)" = 0 ] || fail "run as root (installs Debian packages)"
    step "installing slurmctld slurmd slurmdbd slurm-client munge mariadb-server"
    bash "$(dirname "$0")/../../.ci/apt-install" \
        slurmctld slurmd slurmdbd slurm-client munge mariadb-server
}

write_config() {
    local cpus memory
    cpus=$(nproc)
    memory=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 8 / 10 ))
    install -d -o slurm -g slurm /var/lib/slurm/slurmctld /var/log/slurm /var/spool/slurm
    install -d /var/lib/slurm/slurmd /etc/slurm
    rm -f /etc/slurm/cgroup.conf  # containers rarely allow cgroup plugins; use linuxproc instead
    cat > /etc/slurm/slurm.conf <<CONF
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
MinJobAge=300
ReturnToService=2
SchedulerParameters=nohold_on_prolog_fail
NodeName=localhost CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
CONF
    chown slurm:slurm /etc/slurm/slurmdbd.conf
    chmod 600 /etc/slurm/slurmdbd.conf
}

start() {
    [ "$(id -u)" = 0 ] || fail "run as root (starts system daemons)"
    command -v slurmctld >/dev/null || fail "SLURM is not installed; run: $0 install"
    write_config

    step "munge"
    install -d -o munge -g munge -m 755 /run/munge
    [ -f /etc/munge/munge.key ] || timeout 30 mungekey --create
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    pgrep -x munged >/dev/null || timeout 30 runuser -u munge -- /usr/sbin/munged
    wait_for 20 munge bash -c 'munge -n | unmunge'

    step "MariaDB"
    install -d -o mysql -g mysql /run/mysqld
    pgrep -x mariadbd >/dev/null || pgrep -x mysqld >/dev/null \
        || (setsid mysqld_safe --user=mysql >/dev/null 2>&1 &)  # stays up; wait_for bounds it
    wait_for 60 MariaDB mariadb -e 'SELECT 1'
    timeout 30 mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

    step "slurmdbd"
    pgrep -x slurmdbd >/dev/null || timeout 30 slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
    timeout 30 sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    timeout 30 sacctmgr -i add account bsn Cluster="$CLUSTER" >/dev/null 2>&1 || true
    timeout 30 sacctmgr -i add user root Account=bsn >/dev/null 2>&1 || true

    step "slurmctld and slurmd"
    rm -f /var/lib/slurm/slurmctld/clustername
    pgrep -x slurmctld >/dev/null || timeout 30 slurmctld -c
    wait_for 30 slurmctld scontrol ping
    pgrep -x slurmd >/dev/null || timeout 30 slurmd -N localhost
    wait_for 60 "an idle node" bash -c "sinfo -h -o %t -p $PARTITION | grep -qx idle"
    step "cluster $CLUSTER is up: partition $PARTITION, $(nproc) CPUs"
}

stop() {
    for daemon in slurmd slurmctld slurmdbd; do pkill -x "$daemon" 2>/dev/null || true; done
    timeout 30 mariadb-admin shutdown 2>/dev/null || true
    pkill -x munged 2>/dev/null || true
    # Wait until they are gone, so that an immediate `start` does not find them exiting.
    for _ in $(seq 30); do
        local alive=0
        for daemon in slurmd slurmctld slurmdbd munged mariadbd mysqld; do
            pgrep -x "$daemon" >/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 1
    done
    step "stopped"
}

case "${1:-}" in
    install) install_packages ;;
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
