"""Small bundled models and data for the demo and the examples (made offline from scikit-learn's digits data).

The files in ``modeldiff/data`` are written by ``scripts/make_demo_models.py``:

* ``digits_mlp.pt``: state_dict of :func:`digits_mlp` (64-32-32-10 ReLU MLP), trained on 8x8 digits scaled to
  [0, 1];
* ``digits_mlp_finetuned.pt``: the same network fine-tuned for a few epochs on a shifted copy of the training data;
* ``digits_mlp_pruned.pt``: the same network with its 30% smallest weights per layer set to zero;
* ``digits_test.pt``: ``{"x": [N, 64], "y": [N]}``, held-out test digits.

Example:
    >>> from modeldiff import zoo
    >>> a = zoo.load("digits_mlp"); b = zoo.float16_copy(a)
    >>> x, y = zoo.digits_test()
    >>> a(x[:2]).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import copy
from importlib import resources

import torch
from torch import nn

__all__ = ["DATA_DIR", "digits_mlp", "digits_test", "float16_copy", "load", "MODELS"]

#: The bundled models: name -> file in the package's data folder.
MODELS = {
    "digits_mlp": "digits_mlp.pt",
    "digits_mlp_finetuned": "digits_mlp_finetuned.pt",
    "digits_mlp_pruned": "digits_mlp_pruned.pt",
}

DATA_DIR = resources.files("modeldiff") / "data"


def digits_mlp() -> nn.Module:
    """The architecture of the bundled digits models: 64 -> 32 -> 32 -> 10, ReLU (use as ``--arch
    modeldiff.zoo:digits_mlp``)."""
    return nn.Sequential(
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
    )


def load(name: str, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A bundled model by name (a key of :data:`MODELS`), in eval mode."""
    if name not in MODELS:
        raise KeyError(f"unknown bundled model {name!r}; expected one of {', '.join(MODELS)}")
    model = digits_mlp()
    with resources.as_file(DATA_DIR / MODELS[name]) as path:
        model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    return model.to(dtype).eval()


def float16_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every parameter rounded to float16 (kept in the original dtype)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.copy_(p.to(torch.float16).to(p.dtype))
    return out.eval()


def digits_test(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out digits: ``x`` ``[N, 64]`` in [0, 1] and labels ``y`` ``[N]``."""
    with resources.as_file(DATA_DIR / "digits_test.pt") as path:
        data = torch.load(path, weights_only=True, map_location="cpu")
    return data["x"].to(dtype), data["y"].long()
