"""Backbones: SmallCNN's channels-last activations change speed, never the function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ltu_lightning.networks import SmallCNN

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_forward(model: SmallCNN, x: torch.Tensor) -> torch.Tensor:
    """The same network computed layer by layer in the default (NCHW-contiguous) layout."""
    for layer in model.features:
        x = layer(x).contiguous()
    return model.classifier(x)


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_small_cnn_matches_the_contiguous_computation(batch_norm, in_channels):
    torch.manual_seed(0)
    model = SmallCNN(in_channels=in_channels, batch_norm=batch_norm, width=8, hidden=16).eval()
    x = torch.randn(6, in_channels, 28, 28)
    out = model(x)
    assert out.shape == (6, 10)
    torch.testing.assert_close(out, reference_forward(model, x), rtol=1e-5, atol=1e-6)

    # Gradients of the parameters agree too; the parameters keep their default layout.
    model.train()
    grads = torch.autograd.grad(F.cross_entropy(model(x), torch.arange(6)), model.parameters())
    ref = torch.autograd.grad(
        F.cross_entropy(reference_forward(model, x), torch.arange(6)), model.parameters()
    )
    for g, r, p in zip(grads, ref, model.parameters(), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
        assert p.is_contiguous()


def test_small_cnn_state_dict_keys_are_stable():
    """Checkpoints written before the layout change load unchanged: same keys, same shapes."""
    keys = {k: tuple(v.shape) for k, v in SmallCNN(width=8, hidden=16).state_dict().items()}
    assert keys == {
        "features.0.weight": (8, 1, 3, 3),
        "features.0.bias": (8,),
        "features.3.weight": (16, 8, 3, 3),
        "features.3.bias": (16,),
        "classifier.1.weight": (16, 16 * 7 * 7),
        "classifier.1.bias": (16,),
        "classifier.3.weight": (10, 16),
        "classifier.3.bias": (10,),
    }


def test_layout_benchmark_script_prints_its_table(capsys, monkeypatch):
    """scripts/bench_smallcnn_layout.py (the numbers of docs/benchmarks.md, "Speed") runs."""
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_smallcnn_layout.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--batches", "2", "--calls", "1"])
    runpy.run_path(str(script), run_name="__main__")
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2 |")]
    assert [r.split(" | ")[1] for r in rows] == ["inference", "train step"]
