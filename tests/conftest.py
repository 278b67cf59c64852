"""Shared test set-up: tests marked `cuda` skip on machines without a CUDA GPU; every other
test runs on the CPU whatever the machine, so that the suite passes, and compares exactly,
on a GPU machine too."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def cpu_unless_marked_cuda(request, monkeypatch):
    """Hide the GPU from unmarked tests: from this process (--device auto picks the CPU)
    and from the processes they start (CUDA_VISIBLE_DEVICES)."""
    if "cuda" in request.keywords:
        return
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
