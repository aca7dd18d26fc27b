import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest
import torch

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


@pytest.fixture(scope="module", autouse=True)
def _module_seed():
    """Every module starts from the same global torch RNG state.  A module-scoped fixture that builds a model
    takes its initial weights from the global RNG; unseeded, they (and so every threshold checked on that model)
    depended on which tests ran before it in the process -- a test could pass alone and fail in a combined run."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _test_seed():
    """Likewise per test: a test's outcome does not depend on the tests selected before it (``-k``, ``-x``)."""
    torch.manual_seed(0)


@pytest.fixture
def tiny_sets():
    """A tiny learnable, flip-invariant 4-class problem: class = (bright half: top/bottom) x (bright
    channel: red/green).  Returns (train, test) TensorImageSets at 16 px."""
    from midre.data.base import TensorImageSet

    g = torch.Generator().manual_seed(0)

    def make(n):
        y = torch.arange(n) % 4
        x = torch.rand(n, 3, 16, 16, generator=g) * 0.3
        for i in range(n):
            r, c = divmod(int(y[i]), 2)
            x[i, c, r * 8:(r + 1) * 8, :] += 0.6
        return TensorImageSet((x.clamp(0, 1) * 255).round().to(torch.uint8), y)

    return make(96), make(48)


@pytest.fixture
def descent_weights(monkeypatch):
    """``watch(module)``: the ``weight`` of every :func:`midre.attacks.base.latent_descent` call that ``module``
    makes from now on (the list fills as the attack runs)."""
    from midre.attacks import base

    def watch(module) -> list[float]:
        weights: list[float] = []
        orig = base.latent_descent

        def spy(*a, **k):
            weights.append(a[5] if len(a) > 5 else k.get("weight", 1.0))
            return orig(*a, **k)

        monkeypatch.setattr(module, "latent_descent", spy)
        return weights
    return watch
