import logging

import pytest
import torch

from quantbalance.deploy.select import cosine, fastest
from quantbalance.errors import UnsupportedError


def test_cosine_of_tensors_arrays_tuples_and_mismatched_shapes() -> None:
    a = torch.tensor([1.0, 2.0, 3.0])
    assert cosine(a, a.numpy() * 2) == pytest.approx(1.0)
    assert cosine((a,), [-a]) == pytest.approx(-1.0)
    assert cosine(torch.zeros(3), torch.zeros(3)) == 1.0
    assert cosine(a, torch.ones(4)) != cosine(a, torch.ones(4))  # nan: never >= a threshold


def test_engines_that_compute_something_else_are_never_picked(caplog) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(64)
    ref = x * 2
    wrong = ref + torch.randn(64) * 0.2  # cosine about 0.99: fast but not the simulated model
    builders = {
        "exact": lambda: lambda b: sum(b * 2 for _ in range(200)),
        "wrong": lambda: lambda b: wrong,
    }
    with caplog.at_level(logging.WARNING):
        name, _, timings, rejected = fastest(builders, x, repeats=3, reference=ref)
    assert name == "exact" and set(timings) == {"exact"}
    assert "cosine" in rejected["wrong"] and "< 0.999" in rejected["wrong"]
    assert "wrong not picked" in caplog.text
    _, _, timings, rejected = fastest(builders, x, repeats=3, reference=ref, min_cosine=0.9)
    assert rejected == {} and set(timings) == {"exact", "wrong"}
    with pytest.raises(UnsupportedError, match="no engine computes the simulated model"):
        fastest({"wrong": builders["wrong"]}, x, reference=ref)
