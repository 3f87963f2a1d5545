"""invsr_cli.engine.malloc: freed large blocks are reused instead of being unmapped and faulted in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")

# Allocate, fill and free a 64 MB tensor twenty times (as a forward pass does with its activations); count the minor
# page faults of the last eight rounds. With glibc's defaults each round mmaps the block afresh and faults every page
# in again; kept in the heap, the freed blocks are reused once the heap has grown (here after ~8 rounds).
# (torch, not numpy: numpy asks for transparent huge pages on large arrays, which hides the faults.)
_PROBE = """
import json, resource, sys
import torch
from invsr_cli.engine import malloc
applied = malloc.keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.empty(16 * 2**20); a.fill_(1.0); del a
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "mode": malloc.mode(), "faults": sum(faults[12:])}))
"""

PAGES = 8 * 64 * 2**20 // 4096  # the pages of the last eight rounds


def _probe(arg: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, arg], env={**os.environ, **env}, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


@pytest.mark.slow
def test_keep_freed_memory_avoids_refaulting_large_blocks():
    system = _probe("system")
    keep = _probe("keep")
    assert (system["applied"], system["mode"]) == (False, "system")
    assert (keep["applied"], keep["mode"]) == (True, "keep")
    assert system["faults"] > PAGES // 2, system  # glibc mmaps the block afresh: every page faults again
    assert keep["faults"] < PAGES // 10, keep  # the freed blocks are reused


@pytest.mark.slow
def test_env_turns_it_off():
    r = _probe("keep", INVSR_MALLOC="system")
    assert (r["applied"], r["mode"]) == (False, "system")
    assert r["faults"] > PAGES // 2, r
