"""Train the bundled demo models offline on scikit-learn's digits data (writes modeldiff/data/*.pt).

    python scripts/make_demo_models.py

Deterministic (fixed seeds). Needs scikit-learn (only for this script).
"""

from __future__ import annotations

from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from modeldiff.zoo import digits_mlp

OUT = Path(__file__).resolve().parents[1] / "modeldiff" / "data"


def train(model, x, y, epochs, lr, seed):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main():
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    base = train(digits_mlp(), xtr, ytr, epochs=60, lr=3e-3, seed=0)
    tuned = digits_mlp()
    tuned.load_state_dict(base.state_dict())
    shifted = (xtr + 0.05 * torch.randn(xtr.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    tuned = train(tuned, shifted, ytr, epochs=3, lr=5e-4, seed=1)
    pruned = digits_mlp()
    pruned.load_state_dict(base.state_dict())
    with torch.no_grad():
        for m in pruned.modules():
            if isinstance(m, torch.nn.Linear):
                k = int(0.3 * m.weight.numel())
                cut = m.weight.abs().flatten().kthvalue(k).values
                m.weight[m.weight.abs() <= cut] = 0.0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, model in (("digits_mlp", base), ("digits_mlp_finetuned", tuned), ("digits_mlp_pruned", pruned)):
        torch.save(model.state_dict(), OUT / f"{name}.pt")
        print(f"{name}: test accuracy {accuracy(model, xte, yte):.3f}")
    torch.save({"x": xte.double(), "y": yte}, OUT / "digits_test.pt")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
