"""recycled_memory: pages are reused inside a pass and given back after it (glibc)."""

import json
import os
import resource
import subprocess
import sys

import pytest
import torch

from speechbrain_ext import memory
from speechbrain_ext.lobes.models.frcrn import FRCRN
from speechbrain_ext.lobes.models.mossformer import MossFormerMaskNet

MB = 1 << 20

pytestmark = pytest.mark.skipif(memory._glibc() is None, reason="recycled_memory is a no-op outside glibc")


# Run in a fresh interpreter: in a long-lived process, earlier tests leave free heap blocks that
# can serve a large request without new pages, which would hide what is measured here.
_MEASURE = """
import json, resource, torch
from speechbrain_ext import memory

def faults(megabytes=128):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(megabytes << 18)  # written page by page, then freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def resident_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS"))

result = {"outside": faults()}
with memory.recycled_memory():
    # The first blocks may come from where the heap had room; after that, the same pages.
    result["inside"] = min(faults() for _ in range(3))
    with memory.recycled_memory():  # nested (another layer, another thread): still on
        pass
    result["after_nested"] = min(faults() for _ in range(2))
    result["held_mb"] = resident_mb()
result["released_mb"] = resident_mb()
result["after"] = faults()
print(json.dumps(result))
"""


def test_freed_pages_are_reused_inside_and_returned_after():
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("MALLOC_", "SPEECHBRAIN_EXT_RECYCLE"))}  # the defaults
    run = subprocess.run([sys.executable, "-c", _MEASURE], capture_output=True, text=True, check=True, env=env)
    result = json.loads(run.stdout.splitlines()[-1])
    pages = 128 * MB // resource.getpagesize()
    assert result["outside"] > pages // 2  # glibc maps fresh pages for every large block
    assert result["inside"] < pages // 10  # the same pages again
    assert result["after_nested"] < pages // 10
    assert result["released_mb"] < result["held_mb"] - 100  # given back when the pass ends
    assert result["after"] > pages // 2  # and the process's own behaviour is back


def test_switched_off_by_environment(monkeypatch):
    for name, value in [("SPEECHBRAIN_EXT_RECYCLE_MEMORY", "0"), ("MALLOC_ARENA_MAX", "2")]:
        memory._glibc.cache_clear()
        with monkeypatch.context() as patch:
            patch.setenv(name, value)
            assert memory._glibc() is None  # so recycled_memory() leaves the allocator alone
            with memory.recycled_memory():
                assert torch.ones(4).sum().item() == 4.0
    memory._glibc.cache_clear()


def test_fused_models_recycle_and_training_does_not():
    frcrn = FRCRN(channels=8, fsmn_hidden=8)
    assert not frcrn.recycles_memory
    assert frcrn.fuse_for_inference().recycles_memory
    masknet = MossFormerMaskNet(16, 16, num_blocks=1, group_size=8, query_key_dim=8)
    assert masknet.fuse_for_inference().recycles_memory
    assert not masknet.train().recycles_memory


def test_recipe_training_runs_in_recycled_memory_on_cpu(monkeypatch):
    """RecipeBrain.fit (every recipe's training) keeps freed pages for the whole run on CPU,
    gives them back when it returns, and leaves the allocator alone on accelerators."""
    import speechbrain as sb

    from speechbrain_ext.training.brain import RecipeBrain

    seen = []
    monkeypatch.setattr(sb.Brain, "fit", lambda self, *args, **kwargs: seen.append((memory._active, args)))
    for device_type in ("cpu", "cuda"):
        brain = RecipeBrain.__new__(RecipeBrain)
        brain.device_type = device_type
        brain.fit("epochs", "train", "valid")
    assert seen == [(1, ("epochs", "train", "valid")), (0, ("epochs", "train", "valid"))]
    assert memory._active == 0
