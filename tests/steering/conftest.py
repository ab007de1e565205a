"""Fixtures of the steering tests: a tiny random Mistral, and the toy organism's scenarios and direction."""

import json

import pytest
import torch
from steer_helpers import REPO, H


@pytest.fixture(scope="module")
def tiny():
    """A randomly initialised tiny MistralForCausalLM (2 layers, GQA 4/2) and a unit direction."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=200, hidden_size=H, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=None,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = MistralForCausalLM(cfg).eval()
    d = torch.randn(H, generator=torch.Generator().manual_seed(1))
    return model, d / d.norm()


@pytest.fixture(scope="session")
def toy_assets(tmp_path_factory):
    from organism.scenarios import generate_scenarios

    root = tmp_path_factory.mktemp("steer_assets")
    raw = generate_scenarios(60, seed=7)  # never seen in training (seed 0)
    (root / "gold-1560-full.json").write_text(json.dumps(raw))
    paths = root / "paths.yaml"
    paths.write_text(f"data_root: {root}\n")
    return root, raw, paths


@pytest.fixture(scope="session")
def derived(organism_dir, toy_assets, tmp_path_factory):
    """The organism's monitoring direction at layer 2, derived through the CLI."""
    from app.cli import main as cli

    root, raw, paths = toy_assets
    out = tmp_path_factory.mktemp("dirs")
    rc = cli(["steer", "--config", str(REPO / "configs/steer_cpu.yaml"), "--paths-config", str(paths),
              "--model", str(organism_dir), "--derive-direction", "--layer", "2", "--out", str(out), "--limit", "40",
              "--test-size", "0"])
    assert rc == 0
    path = out / "direction_monitoring_L2.npy"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["layer"] == 2 and meta["sign"] == "monitored minus unmonitored" and meta["n_positive"] == 40
    assert meta["held_out_test"] == 0
    return path
