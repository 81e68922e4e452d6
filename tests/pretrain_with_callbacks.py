"""A pretraining run with test callbacks, as a script (the loop itself has no test hooks).

    python tests/pretrain_with_callbacks.py OUT STEPS EVERY [--kill-at N] [--checksum PREFIX] [--resume]
        [--set key=value ...]

``--kill-at N``: SIGKILL this process right after step N (test_resume). ``--checksum PREFIX``: append
"step sha1-of-all-parameters" per step to PREFIX.rank<r> (test_distributed, run under torchrun).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import signal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def params_checksum(model) -> str:
    h = hashlib.sha1()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("steps", type=int)
    ap.add_argument("every", type=int)
    ap.add_argument("--kill-at", type=int, default=0)
    ap.add_argument("--checksum", default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()

    from xgeo.config import load_params
    from xgeo.pretrain.train import pretrain

    def on_step(step, model, info):
        if args.checksum:
            with open(f"{args.checksum}.rank{info.rank}", "a") as fh:
                fh.write(f"{step} {params_checksum(model)}\n")
        if args.kill_at and step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    params = load_params(ROOT / "params.yaml", args.sets)
    pretrain(params, Path(args.out), steps=args.steps, checkpoint_every=args.every, on_step=on_step,
             resume=args.resume)


if __name__ == "__main__":
    main()
