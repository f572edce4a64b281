"""A one-node SLURM cluster on localhost, in a temporary directory, for the launch tests.

munged and slurmctld + slurmd run as the current user with state, sockets, logs and
config under the directory; clients find it through ``SLURM_CONF``. Stopped on close.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Dict, Optional

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue")


def available() -> Optional[str]:
    """``None`` when SLURM and munge are installed, else what is missing."""
    missing = [b for b in BINARIES if shutil.which(b) is None and not os.path.exists(f"/usr/sbin/{b}")]
    return f"not installed: {', '.join(missing)}" if missing else None


def _which(b: str) -> str:
    return shutil.which(b) or f"/usr/sbin/{b}"


def _free_ports(n: int):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class LocalSlurm:
    def __init__(self, root: str, cpus: int = 4):
        self.root = root
        self.procs = []
        os.makedirs(root, exist_ok=True)
        for d in ("state", "spool", "log", "munge"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        self.munge_socket = os.path.join(root, "munge", "munge.socket")
        self.conf = os.path.join(root, "slurm.conf")
        host = socket.gethostname().split(".")[0]
        ctld_port, d_port = _free_ports(2)
        user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        lines = [
            "ClusterName=unifews-test", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmUser={user}",
            f"SlurmctldPort={ctld_port}", f"SlurmdPort={d_port}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool",
            f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
            f"SlurmctldLogFile={root}/log/slurmctld.log", f"SlurmdLogFile={root}/log/slurmd.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill", "MpiDefault=none", "ReturnToService=2",
            "JobRequeue=1", "MinJobAge=3600", "KillWait=5", "SlurmdTimeout=60",
            "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
            "SlurmdParameters=config_overrides",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES",
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.env: Dict[str, str] = dict(os.environ, SLURM_CONF=self.conf)

    def start(self, timeout: float = 60.0) -> "LocalSlurm":
        key = os.path.join(self.root, "munge", "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        os.chmod(os.path.join(self.root, "munge"), 0o700)
        m = self.root + "/munge"
        subprocess.run([_which("munged"), "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
                        f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/seed"],
                       check=True, env=self.env, capture_output=True)
        for daemon in ("slurmctld", "slurmd"):
            args = [_which(daemon), "-D", "-f", self.conf] + (["-i"] if daemon == "slurmctld" else [])
            log = open(os.path.join(self.root, "log", f"{daemon}.stdout"), "w")
            self.procs.append(subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mixed"):
                return self
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"local SLURM did not come up: {self.logs()}")

    def logs(self) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log", "slurmctld.stdout", "slurmd.stdout"):
            path = os.path.join(self.root, "log", name)
            if os.path.exists(path):
                with open(path) as f:
                    out.append(f"--- {name}\n" + f.read()[-3000:])
        return "\n".join(out)

    def run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, **kw)

    def sbatch(self, *args: str, cwd: str) -> str:
        out = self.run("sbatch", "--parsable", *args, cwd=cwd)
        if out.returncode:
            raise RuntimeError(f"sbatch failed: {out.stderr}")
        return out.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> Dict[str, str]:
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        fields = {}
        for line in out.splitlines():  # one line per job (array elements too); keep the first
            for tok in line.split():
                k, _, v = tok.partition("=")
                fields.setdefault(k, v)
            break
        return fields

    def jobs(self, job_id: str):
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return [dict(t.partition("=")[::2] for t in line.split()) for line in out.splitlines() if line.strip()]

    def wait(self, job_id: str, timeout: float, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                         "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")) -> str:
        deadline = time.time() + timeout
        state = "?"
        while time.time() < deadline:
            jobs = self.jobs(job_id)
            if jobs and all(j.get("JobState") in states for j in jobs):
                return ",".join(sorted({j["JobState"] for j in jobs}))
            state = ",".join(j.get("JobState", "?") for j in jobs)
            time.sleep(1)
        raise TimeoutError(f"job {job_id} still {state} after {timeout} s")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        pid = os.path.join(self.root, "munge", "munged.pid")
        if os.path.exists(pid):
            with open(pid) as f:
                try:
                    os.kill(int(f.read().strip()), signal.SIGTERM)
                except (ValueError, ProcessLookupError):
                    pass
