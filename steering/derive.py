"""`steer --derive-direction`: a steering direction from the model's own residuals, saved as .npy + .json
(how it was made) + .manifest.json (the resolved config, code version and model, like every stage)."""

from __future__ import annotations

from pathlib import Path

from lm import backends, chat
from lm.models import is_toy, resolve_model
from records.assets import check_output_dir
from records.errors import InputError
from records.jsonl import write_json_atomic
from records.paths import PathsConfig
from records.provenance import make_manifest
from records.schema import Scenario
from steering import direction as dirmod
from steering import grid
from steering.config import SteerConfig


def check(cfg: SteerConfig) -> None:
    """What needs no model: both required settings given."""
    if cfg.derive.layer < 0 or not cfg.derive.out:
        raise InputError("--derive-direction needs --layer N and --out PATH (a folder or a .npy file)")


def next_command(cfg: SteerConfig, config_path: str, path: Path, input_path: Path) -> str:
    """The grid along the new direction, with every setting it depends on spelled out (it runs as printed)."""
    return (f"af-introspect steer --config {config_path} --model {cfg.model} --input {input_path} "
            f"--paths-config {cfg.paths} --direction {path} --layers {cfg.derive.layer}")


def main(cfg: SteerConfig, scenarios: list[Scenario], paths: PathsConfig, input_path: Path,
         config_path: str) -> int:
    from transformers import AutoTokenizer

    d = cfg.derive  # settings were checked by the CLI before the scenarios loaded (check)
    out = Path(d.out)
    # the user's own direction file (af_intent_direction.npy) and scenarios are never overwritten
    check_output_dir(out.parent if out.suffix == ".npy" else out, [paths.data_root, input_path])
    if cfg.limit:
        scenarios = scenarios[:cfg.limit]
    # never the scenarios a steering run with the same limit and test_size holds out as test.jsonl
    n_test = min(cfg.test_size, max(0, len(scenarios) - 1))
    scenarios = scenarios[:len(scenarios) - n_test]
    model_dir = resolve_model(cfg.model)
    depth, hidden = grid.model_depth(model_dir)
    if not 0 <= d.layer < depth:
        raise InputError(f"--layer {d.layer}: layer does not exist in {cfg.model}, which has {depth} layers "
                         f"(valid: 0..{depth - 1})")
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or model_dir)
    rendering = chat.detect_chat_rendering(tokenizer, cfg.model)
    model = backends.load_hf_model(model_dir, cfg.dtype)
    job = dirmod.DeriveJob(scenarios, list(paths.af_labels), rendering)
    vec, meta = dirmod.derive(model, tokenizer, job, d.layer, d, cfg.prompts)
    meta.update(model=model_dir if is_toy(cfg.model) else cfg.model, scenarios=str(input_path),
                n_scenarios=len(scenarios), held_out_test=n_test)
    path = dirmod.save_direction(d.out, vec, meta)
    write_json_atomic(path.with_suffix(".manifest.json"),
                      make_manifest("steer-derive", cfg, model_dir, {"scenarios": str(input_path)}))
    print(f"direction: {path} (layer {d.layer}, {meta['sign']}, norm {meta['norm']:.4f}, hidden {hidden}); "
          f"metadata {path.with_suffix('.json')}")
    print(f"steer along it: {next_command(cfg, config_path, path, input_path)}")
    return 0
