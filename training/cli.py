"""`af-introspect train`: train the LoRA explainer of one config (a --debug run of it must succeed first)."""

from __future__ import annotations

import argparse
import sys

DEFAULT_CONFIG = "configs/af_context_ablation.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Train a LoRA explainer on a task's records (configs/af_*.yaml; *_cpu.yaml runs the toy organism). "
        "Run with --debug first: a few steps that print the data and fail on NaN or zero loss; a full run of "
        "the same config is refused until one succeeded (--force overrides). Checkpoints every save_steps; "
        "--resume continues the latest complete one exactly.")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="YAML decoded into training.config.TrainConfig")
    p.add_argument("--debug", action="store_true", help="a few steps, tiny eval, data printout; leaves the marker a "
                                                        "full run needs")
    p.add_argument("--force", action="store_true", help="train without a successful --debug run (warns)")
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    p.add_argument("--progress-log", default="PROGRESS.md", help="research log a full run appends its entry to")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.batch_size=4 (part of the config hash)")
    p.add_argument("--output-dir", help="override the config's output_dir")
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps (the LR schedule still spans "
                                                 "the configured epochs)")
    p.add_argument("--check-debug", action="store_true",
                   help="only report whether a --debug run of this config succeeded (exit 0) or not (exit 1)")


def main(args: argparse.Namespace) -> int:
    from training.config import load_train_config

    cfg = load_train_config(args.config, args.set, args.output_dir)
    if args.check_debug:
        from training.runlog import debug_marker

        marker = debug_marker(cfg)
        print(f"{'ok' if marker.is_file() else 'missing'}: {marker}")
        return 0 if marker.is_file() else 1
    from training import distributed
    from training.train import main as train

    try:
        summary = train(cfg, debug=args.debug, force=args.force, resume=args.resume, max_steps=args.max_steps)
        main_process = distributed.is_main()
    finally:
        distributed.shutdown()
    if not main_process:  # data parallel: the main process reports
        return 0
    print(f"{'debug run' if args.debug else 'training'} finished: {summary['steps']} steps, "
          f"last loss {summary['last_loss']:.4f}; adapter in {summary['final']}", file=sys.stderr)
    if not args.debug:
        from records.progress import append_phase

        append_phase(args.progress_log, "5", f"explainer training ({args.config})", "DONE",
                     done=[f"{summary['steps']} optimizer steps -> {summary['final']}"],
                     findings=[f"loss {summary['first_loss']} -> {summary['last_loss']} (answer tokens; first and "
                               "last step of this run)"],
                     next_step=f"af-introspect evaluate --config {args.config}")
    return 0
