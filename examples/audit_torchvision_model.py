"""Audit a model that midre did not train: the end-to-end check of `midre audit` (docs/audit.md).

1. Export synthetic face identities as PNG files: DATA/private/<person>/<i>.png (the private training
   images, one folder per class) and DATA/public/<i>.png (other people, for the attacks' priors).
2. Train a torchvision ResNet-18 on the private folder with a PLAIN torchvision/torch script
   (ImageFolder, ToTensor + ImageNet Normalize, Adam) -- no midre involved -- and save its state dict.
3. Run `midre audit` on that .pth file through the real command line.

    python examples/audit_torchvision_model.py --work runs/audit-example     # the run of docs/audit.md
    python examples/audit_torchvision_model.py --work /tmp/a --audit-arg=--preset=paper   # other audit flags

The defaults are the run shown in docs/audit.md (6 people x 40 images at 32 px, 300 public images,
PLG-MI and GMI at a reduced CPU budget); extra ``--audit-arg`` flags are appended (a later flag wins).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def export_faces(root: Path, classes: int, images: int, public: int, resolution: int, seed: int,
                 variation: float) -> None:
    """Synthetic faces (midre's procedural identities) written as PNG files, as a user's folder would be."""
    from PIL import Image

    from midre.data.synthetic import generate_faces

    def save(img: torch.Tensor, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)

    x, y = generate_faces(seed, "private", classes, images, resolution, variation)
    for i, (img, c) in enumerate(zip(x, y.tolist())):
        save(img, root / "private" / f"person_{c:02d}" / f"{i:04d}.png")
    x, _ = generate_faces(seed, "public", public, 1, resolution, variation) if public else (torch.empty(0), None)
    for i, img in enumerate(x):
        save(img, root / "public" / f"{i:04d}.png")


def train_plain_torchvision(folder: Path, out: Path, epochs: int, seed: int, arch: str = "resnet18") -> float:
    """A plain torchvision training script: ImageFolder + ImageNet normalisation + Adam; saves the state dict.
    Returns the final training accuracy (%)."""
    import torchvision
    from torchvision import transforms as T

    torch.manual_seed(seed)
    tf = T.Compose([T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    ds = torchvision.datasets.ImageFolder(str(folder), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    model = getattr(torchvision.models, arch)(num_classes=len(ds.classes))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        model.train()
        correct = total = 0
        for x, y in loader:
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, train acc {100 * correct / total:.1f}%")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    return 100.0 * correct / total


# the reduced CPU budget of the docs run (the quick presets, fewer iterations)
AUDIT_BUDGET = ["--attacks", "plgmi,gmi", "--attack-param", "plgmi.iterations=60", "--attack-param",
                "gmi.iterations=100", "--repeats", "2", "--prior-param", "gan.iterations=150", "--prior-param",
                "cgan.iterations=150", "--eval-epochs", "12"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/audit-example")
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--images", type=int, default=40, help="images per class")
    p.add_argument("--variation", type=float, default=0.5, help="per-image nuisance of the synthetic faces (0-3)")
    p.add_argument("--public", type=int, default=300, help="public images (other identities)")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--audit-arg", action="append", default=[], help="extra argument for `midre audit`")
    args = p.parse_args()
    work = Path(args.work)
    t0 = time.perf_counter()
    if not (work / "data" / "private").is_dir():
        export_faces(work / "data", args.classes, args.images, args.public, args.resolution, args.seed,
                     args.variation)
    model_file = work / "resnet18_faces.pth"
    if not model_file.exists():
        acc = train_plain_torchvision(work / "data" / "private", model_file, args.epochs, args.seed)
        print(f"plain torchvision training: {acc:.1f}% train accuracy, {time.perf_counter() - t0:.0f}s -> {model_file}")
    from midre.cli import main as midre

    cmd = ["audit", str(model_file), "--arch", "resnet18", "--data", str(work / "data" / "private"),
           "--public", str(work / "data" / "public"), "--resolution", str(args.resolution),
           "--out", str(work / "audit"), *AUDIT_BUDGET, *args.audit_arg]
    print("midre " + " ".join(cmd))
    raise SystemExit(midre(cmd))


if __name__ == "__main__":
    main()
