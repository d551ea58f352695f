"""runtime.keep_freed_host_memory: glibc keeps a CPU step's freed temporaries instead of faulting them back in."""

import platform
import resource
import sys

import pytest
import torch

from bogc_cli.data.cache import ModalitySpec
from bogc_cli.data.loader import Batch
from bogc_cli.engine import runtime
from bogc_cli.fusion import METHODS, StepContext
from bogc_cli.models.build import build_model
from bogc_cli.recipe import ModelBlock


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_a_bogc_step_on_mfeat_mlps_takes_no_page_faults_after_warm_up():
    """mfeat's weak3 model (benchmarks/step_time.py's mfeat-cpu): a step's [S, N] temporaries are 170-670 kB.
    Without the settings glibc hands them back between steps and a step takes 100-500 minor faults."""
    assert runtime.keep_freed_host_memory()
    specs = {m: ModalitySpec("vector", [d], "float32") for m, d in (("fou", 76), ("zer", 47), ("mor", 6))}
    torch.manual_seed(0)
    model = build_model(ModelBlock(encoders="mlp", hidden_dim=128, feature_dim=64, dropout=0.2), specs, 10)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    bogc = METHODS["bogc"](METHODS["bogc"].Options(), model, StepContext(torch.device("cpu"), opt))
    g = torch.Generator().manual_seed(0)
    batch = Batch({m: torch.randn(64, *s.shape, generator=g) for m, s in specs.items()},
                  torch.randint(0, 10, (64,), generator=g), torch.arange(64))
    for _ in range(3):
        bogc.step(batch)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        bogc.step(batch)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10 < 20


def test_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(runtime.sys, "platform", "darwin")
    assert runtime.keep_freed_host_memory() is False
