"""Running host commands from the container and Slurm tests: always with a timeout."""

from __future__ import annotations

import os
import shutil
import subprocess


def sh(cmd, timeout, env=None, check=False, **kw):
    """subprocess.run with a timeout, text output, no stdin; ``check`` raises with the output."""
    res = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, **kw)
    if check and res.returncode != 0:
        raise RuntimeError("%s failed (%d):\n%s\n%s" % (" ".join(map(str, cmd)), res.returncode,
                                                         res.stdout[-3000:], res.stderr[-3000:]))
    return res


def apt_install(packages):
    """apt-get install PACKAGES; returns None or the reason it is impossible."""
    if os.geteuid() != 0:
        return "needs root to install %s with apt-get" % " ".join(packages)
    if not shutil.which("apt-get"):
        return "no apt-get to install %s" % " ".join(packages)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        sh(["apt-get", "update", "-qq"], timeout=300, env=env)
        # wait for another apt (unattended or a parallel job) rather than fail on its lock
        res = sh(["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-qq",
                  "--no-install-recommends", *packages],
                 timeout=600, env=env)
    except subprocess.TimeoutExpired:
        return "apt-get install %s timed out" % " ".join(packages)
    if res.returncode != 0:
        return "apt-get install %s failed: %s" % (" ".join(packages), res.stderr.strip()[-500:])
    return None
