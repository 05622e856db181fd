"""A real single-node SLURM for the tests: munged, slurmctld and slurmd from Debian's slurm-wlm and munge,
started in a folder of their own with a minimal slurm.conf (2 one-CPU jobs at once, no cgroups, no
accounting), on free ports, and stopped afterwards. Needs root (the daemons run as root here) and the
binaries (`.ci/run` installs them: apt-get install slurm-wlm munge)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")


def unavailable() -> str | None:
    """Why a SLURM cannot be started here, or None."""
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd/munged needs root"
    missing = [name for name in DAEMONS if shutil.which(name) is None and not os.path.exists(f"/usr/sbin/{name}")]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge; .ci/run does)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class Cluster:
    """``with Cluster(directory) as env:`` ... ``env`` has ``SLURM_CONF`` for sbatch/squeue/submitit."""

    def __init__(self, directory: str, cpus: int = 2) -> None:
        self.directory, self.cpus = directory, cpus
        self.env = dict(os.environ, SLURM_CONF=os.path.join(directory, "slurm.conf"))

    def path(self, *parts: str) -> str:
        return os.path.join(self.directory, *parts)

    def __enter__(self) -> dict:
        for sub in ("state", "spool", "log", "munge"):
            os.makedirs(self.path(sub), exist_ok=True)
        os.chmod(self.path("munge"), 0o700)
        with open(self.path("munge", "munge.key"), "wb") as f:
            f.write(os.urandom(128))
        os.chmod(self.path("munge", "munge.key"), 0o600)
        socket_path = self.path("munge", "munge.socket")
        subprocess.run(
            [_binary("munged"), "--force", "-S", socket_path, f"--key-file={self.path('munge', 'munge.key')}",
             f"--log-file={self.path('log', 'munged.log')}", f"--pid-file={self.path('munge', 'munged.pid')}",
             f"--seed-file={self.path('munge', 'seed')}"],
            check=True, capture_output=True,
        )
        host = socket.gethostname()
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
        with open(self.env["SLURM_CONF"], "w") as f:
            f.write("\n".join([
                "ClusterName=dmactest", f"SlurmctldHost={host}(127.0.0.1)",  # loopback: no name lookup needed "SlurmUser=root", "SlurmdUser=root",
                "AuthType=auth/munge", f"AuthInfo=socket={socket_path}",
                f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
                f"StateSaveLocation={self.path('state')}", f"SlurmdSpoolDir={self.path('spool')}",
                f"SlurmctldPidFile={self.path('slurmctld.pid')}", f"SlurmdPidFile={self.path('slurmd.pid')}",
                f"SlurmctldLogFile={self.path('log', 'slurmctld.log')}", f"SlurmdLogFile={self.path('log', 'slurmd.log')}",
                "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SwitchType=switch/none", "MpiDefault=none",
                "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
                "ReturnToService=2", "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
                "JobCompType=jobcomp/none", "KillWait=30", "MinJobAge=600", "SchedulerParameters=sched_interval=2",
                f"NodeName={host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={memory_mb} State=UNKNOWN",
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            ]) + "\n")
        subprocess.run([_binary("slurmctld"), "-f", self.env["SLURM_CONF"]], check=True, env=self.env, capture_output=True)
        subprocess.run([_binary("slurmd"), "-f", self.env["SLURM_CONF"], "-N", host], check=True, env=self.env, capture_output=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True).stdout.strip()
            if state == "idle":
                return self.env
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"SLURM did not come up (node state {state!r}); see {self.path('log')}")

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["scancel", "--full", "-u", "root"], env=self.env, capture_output=True)
        for pid_file in (self.path("slurmd.pid"), self.path("slurmctld.pid"), self.path("munge", "munged.pid")):
            try:
                with open(pid_file) as f:
                    os.kill(int(f.read().strip()), signal.SIGTERM)
            except (FileNotFoundError, ValueError, ProcessLookupError):
                pass
