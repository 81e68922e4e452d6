"""What the benchmarks that time whole ``xgeo`` commands share: one command's CPU seconds."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds(cmd: list[str], env: dict, log: Path) -> float:
    """Run ``cmd`` in the project root with its output in ``log``; its user + system CPU seconds (of the process and
    the children it waited for, from ``wait4``: exact also while other commands run beside it). Exits naming the
    command and its log when it fails."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return usage.ru_utime + usage.ru_stime
