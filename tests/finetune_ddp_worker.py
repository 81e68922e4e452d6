"""Worker of tests/test_finetune_device.py's torchrun test (not a test module): finetunes a tiny task and writes, per
rank, a checksum of the network's parameters after every optimiser step, through finetune's on_step callback.

usage: torchrun --nproc_per_node 2 tests/finetune_ddp_worker.py TASK OUT CHECKSUMS STEPS [--set KEY=VALUE ...]
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checksum(net) -> str:
    h = hashlib.sha256()
    for name, p in sorted(net.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(argv: list[str]) -> None:
    from xgeo.config import load_params
    from xgeo.finetune.run import finetune

    task, out, checksums, steps, *rest = argv
    sets = [v for k, v in zip(rest[::2], rest[1::2]) if k == "--set"]
    params = load_params(ROOT / "params.yaml", sets)
    lines: list[str] = []
    finetune(task, "random", Path(out), params, steps=int(steps),
             on_step=lambda step, net: lines.append(f"{step} {checksum(net)}"))
    Path(f"{checksums}.rank{os.environ.get('RANK', '0')}").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
