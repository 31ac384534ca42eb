"""Train example model families offline on scikit-learn's digits data, for ``modeldiff drift`` and ``stability``.

    python examples/make_digits_versions.py --out examples/digits
    modeldiff drift examples/digits/round{0,1,2,3}.onnx --data examples/digits/test.pt --eps 0.03 --out drift/
    modeldiff stability examples/digits/seed*.onnx --data examples/digits/test.pt --eps 0.03 --out stability/

Writes into ``--out``:

* ``round0 .. round{R-1}``: a self-training chain. ``round0`` is trained on a small labelled subset of the
  training split (``--labelled`` digits, stratified); each later round labels the unlabelled rest of the training
  split with the previous round's own predictions (keeping those with softmax confidence >= ``--confidence``)
  and fine-tunes the previous round's weights on labelled + pseudo-labelled digits.
* ``seed0 .. seed{M-1}``: an ensemble of the same training recipe (architecture, optimiser, epochs) on the whole
  labelled training split, member ``s`` with initialisation seed ``s`` on bootstrap resample ``s`` of it.
* ``test.pt`` (``[P, 64]`` float64 test digits in [0, 1]) and ``labels.pt`` (``[P]`` int64), the first
  ``--test-points`` digits of the held-out split; ``manifest.json`` (settings and test accuracies).

Every model is :func:`modeldiff.zoo.digits_mlp` (64-32-32-10 ReLU) on 8x8 digits scaled to [0, 1], saved with a
dynamic batch dimension in a format ``modeldiff`` loads with no extra flags: ``.onnx`` (default; loaded as a
chain of ``Linear``/``ReLU`` modules, so ``--method auto`` picks the tight differential bound) or ``.pt2``
(``torch.export``; its ATen graph is read as the same chain). Deterministic for a given ``--seed``; needs
scikit-learn. About 15 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from modeldiff.zoo import digits_mlp

BATCH = 64


def load_data(seed: int):
    """``(x_train, y_train, x_test, y_test)``: digits scaled to [0, 1], a stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return xtr, ytr, xte, yte


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int) -> nn.Module:
    """Adam on cross-entropy, minibatches of 64 shuffled by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), BATCH):
            idx = perm[i : i + BATCH]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def fresh(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return digits_mlp()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def self_training_chain(xtr, ytr, rounds: int, labelled: int, epochs: int, confidence: float, seed: int):
    """``rounds`` models: round 0 on ``labelled`` stratified digits, round k fine-tuned from round k-1 on labelled
    + pseudo-labelled digits (the pool labelled by round k-1, confident ones only)."""
    from sklearn.model_selection import train_test_split

    lab_idx, pool_idx = train_test_split(torch.arange(len(xtr)), train_size=labelled, random_state=seed,
                                         stratify=ytr)
    xl, yl, pool = xtr[lab_idx], ytr[lab_idx], xtr[pool_idx]
    # few labelled digits: more passes over them so that round 0 converges
    model = train(fresh(seed), xl, yl, epochs=epochs * 4, lr=3e-3, seed=seed)
    chain = [(model, {"labelled": len(xl), "pseudo": 0})]
    for k in range(1, rounds):
        prev = chain[-1][0]
        with torch.no_grad():
            probs = torch.softmax(prev(pool), dim=1)
        conf, pseudo = probs.max(dim=1)
        keep = conf >= confidence
        x = torch.cat([xl, pool[keep]])
        y = torch.cat([yl, pseudo[keep]])
        model = digits_mlp()
        model.load_state_dict(prev.state_dict())
        model = train(model, x, y, epochs=max(1, epochs // 2), lr=1e-3, seed=seed + k)
        chain.append((model, {"labelled": len(xl), "pseudo": int(keep.sum())}))
    return chain


def ensemble(xtr, ytr, members: int, epochs: int, seed: int):
    """``members`` models of the same recipe, member s: init seed ``seed + s``, bootstrap resample ``seed + s``."""
    out = []
    for s in range(members):
        g = torch.Generator().manual_seed(1000 + seed + s)
        idx = torch.randint(len(xtr), (len(xtr),), generator=g)
        model = train(fresh(seed + s), xtr[idx], ytr[idx], epochs=epochs, lr=3e-3, seed=seed + s)
        out.append((model, {"bootstrap_seed": 1000 + seed + s, "init_seed": seed + s,
                            "distinct_examples": int(idx.unique().numel())}))
    return out


def save(model: nn.Module, path: Path, fmt: str) -> None:
    """Save with a dynamic batch dimension: ONNX (opset 17) or ``torch.export`` (.pt2)."""
    model = model.float().eval()
    example = torch.rand(2, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notes about the exporters
        if fmt == "onnx":
            torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)
        else:
            batch = torch.export.Dim("batch")
            torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("examples/digits"), help="output folder")
    parser.add_argument("--rounds", type=int, default=4, help="self-training rounds (round0 .. round{R-1})")
    parser.add_argument("--members", type=int, default=5, help="ensemble members (seed0 .. seed{M-1})")
    parser.add_argument("--epochs", type=int, default=40, help="epochs per model (round0: 4x, later rounds: 1/2x)")
    parser.add_argument("--labelled", type=int, default=50, help="labelled digits of the self-training chain")
    parser.add_argument("--confidence", type=float, default=0.9, help="pseudo-labels kept from this softmax prob")
    parser.add_argument("--test-points", type=int, default=200, help="test digits saved in test.pt / labels.pt")
    parser.add_argument("--format", choices=["onnx", "pt2"], default="onnx", help="model file format")
    parser.add_argument("--seed", type=int, default=0, help="base seed (data split, init, shuffles, bootstrap)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch's default; the models are tiny, 1 is fastest on a busy machine)")
    args = parser.parse_args(argv)
    for name in ("rounds", "members", "epochs", "labelled", "test_points"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.rounds < 2 and args.members < 2:
        parser.error("nothing to compare: give --rounds >= 2 or --members >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    xtr, ytr, xte, yte = load_data(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": args.format, "architecture": "modeldiff.zoo:digits_mlp (64-32-32-10 ReLU)",
                "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "train_size": len(xtr), "test_size": len(xte), "models": {}}

    def emit(name: str, model: nn.Module, info: dict) -> None:
        path = args.out / f"{name}.{args.format}"
        save(model, path, args.format)
        acc = accuracy(model, xte, yte)
        manifest["models"][name] = {"file": path.name, "test_accuracy": acc, **info}
        extra = ", ".join(f"{k} {v}" for k, v in info.items())
        print(f"{name:>8}: test accuracy {acc:.3f} ({len(xte)} held-out digits; {extra})", flush=True)

    if args.rounds >= 1:
        chain = self_training_chain(xtr, ytr, args.rounds, min(args.labelled, len(xtr) - 10), args.epochs,
                                    args.confidence, args.seed)
        for k, (model, info) in enumerate(chain):
            emit(f"round{k}", model, info)
    for s, (model, info) in enumerate(ensemble(xtr, ytr, args.members, args.epochs, args.seed)):
        emit(f"seed{s}", model, info)

    n = min(args.test_points, len(xte))
    torch.save(xte[:n].double().contiguous(), args.out / "test.pt")
    torch.save(yte[:n].clone(), args.out / "labels.pt")
    manifest["test_points"] = n
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {args.out} ({n} test points in test.pt, labels.pt) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
