"""Child process for the training fault-injection tests: train one config, SIGKILL itself at a chosen call.

    python train_child.py '{"config": ..., "sets": [...], "output_dir": ..., "max_steps": 8,
                            "kill": {"function": "training.data.collate", "call": 7}}'

The kill replaces a function (module path + attribute) with a wrapper that, on its N-th call, kills the
process with SIGKILL before doing the work: no cleanup handler runs, as when the OOM killer or a
scheduler's preemption ends a job.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys


def arm_kill(function: str, call: int) -> None:
    module_name, attr = function.rsplit(".", 1)
    module = importlib.import_module(module_name)
    original = getattr(module, attr)
    calls = 0

    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == call:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(module, attr, wrapper)


def main() -> None:
    spec = json.loads(sys.argv[1])
    from training import train as T
    from training.config import load_train_config

    cfg = load_train_config(spec["config"], spec["sets"], spec["output_dir"])
    if spec.get("kill"):
        arm_kill(spec["kill"]["function"], spec["kill"]["call"])
    T.main(cfg, force=True, resume=spec.get("resume", False), max_steps=spec["max_steps"])


if __name__ == "__main__":
    main()
