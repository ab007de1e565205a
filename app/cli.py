"""`af-introspect`: one entry point, one subcommand per stage. Stages talk only through records on disk.

Each stage module exposes `add_arguments(parser)` and `main(args)`; they are imported only when their
subcommand runs, so `--help` is instant and a CPU-only machine never imports GPU code it does not use.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from lm.models import provide_toy_organism
from records.errors import EXIT_BAD_INPUT, EXIT_STAGE_FAILED, InputError, StageFailure
from records.requirements import require_packages

# subcommand -> (module, one-line help)
STAGES = {
    "preflight": ("app.preflight", "check GPUs, disk, assets, model cache and versions (Phase 1)"),
    "organism": ("organism.cli", "build the toy organism and/or write synthetic assets in the user's formats"),
    "generate": ("generation.cli", "Task 3: paired monitored/unmonitored pass on vLLM's offline engine"),
    "steer": ("steering.cli", "Task 2: steering grid (layers x alphas) on the HF path; derive directions"),
    "features": ("features.cli", "Task 1: select SAE features and attach cluster descriptions"),
    "train": ("training.cli", "train the LoRA explainer on a task's records"),
    "evaluate": ("training.evaluate", "score an explainer on held-out records against baselines"),
    "compare": ("training.compare", "train and score the self and the cross explainer: privileged access or not"),
    "label": ("app.label", "label free-text responses, or relabel a Task 3 / Task 2 records folder into a new one"),
    "report": ("app.report", "turn a run directory into report.md with plots"),
    "export": ("interop.cli", "write a run's splits in introspective-interp's files and layout"),
    "demo": ("app.demo", "the whole pipeline on the embedded toy organism (CPU)"),
}

EPILOG = """examples:
  af-introspect demo                                   # whole pipeline on the toy organism, CPU
  af-introspect organism --assets data/toy             # the toy's synthetic assets (configs/paths_toy.yaml)
  af-introspect generate --config configs/generate_cpu.yaml --limit 60
  af-introspect generate --help                        # every flag of one stage

Bad input (a missing file, a wrong field, shape or value) exits with code 2 and one line per problem."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default only when it has one: unset flags fall back to the stage's config file."""

    def _get_help_string(self, action):
        if action.default in (None, False, []) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def toy_organism_dir(name: str = "toy") -> str:
    """`--model toy` / `toy-twin`: the toy organism or its twin (a fixture: imported here, at the command's
    edge, only)."""
    from organism.build import toy_model_dir

    return toy_model_dir(name)


def main(argv: list[str] | None = None) -> int:
    """Parse, dispatch, and turn InputError into one line per problem and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    provide_toy_organism(toy_organism_dir)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        # before the stage's module is imported: a missing package stops it here, not after a model loads
        # (vllm is checked by the stages whose config picks the vllm backend)
        require_packages(args.command, vllm=args.command == "demo")
        return importlib.import_module(args._module).main(args) or 0
    except InputError as e:
        for problem in e.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StageFailure as e:
        print(f"failed: {e}", file=sys.stderr)
        return EXIT_STAGE_FAILED


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The full parser, with flags registered for the subcommand named in `argv` (or all, for help)."""
    parser = argparse.ArgumentParser(
        prog="af-introspect", description=__doc__.splitlines()[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter,
                           epilog="Flags without a default shown take their value from --config.")
        p.set_defaults(_module=module)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    return parser


if __name__ == "__main__":
    sys.exit(main())
