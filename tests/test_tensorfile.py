"""Same tensors and metadata -> the same bytes, from any process (DVC hashes and the kill -9 tests rely on it)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys, torch
from taskprune import tensorfile
from taskprune.masks import save_masks
torch.manual_seed(0)
tensorfile.save({"a": torch.randn(4), "b": torch.ones(2)}, sys.argv[1] + "/t.safetensors",
                {"side": "general", "tokens": 3072, "seq_len": 64, "shared": {"x": "y"}})
save_masks(__import__("pathlib").Path(sys.argv[1]) / "m.safetensors", {"l.w": torch.rand(8, 16) > 0.5, "k.w": torch.rand(4, 8) > 0.5})
"""


def test_files_are_byte_identical_across_processes(tmp_path):
    from taskprune.tensorfile import read_metadata

    outputs = []
    for run in range(4):  # safetensors' metadata map is ordered differently in each process
        out = tmp_path / str(run)
        out.mkdir()
        subprocess.run([sys.executable, "-c", SCRIPT, str(out)], check=True)
        outputs.append(((out / "t.safetensors").read_bytes(), (out / "m.safetensors").read_bytes()))
    assert all(o == outputs[0] for o in outputs)
    assert read_metadata(tmp_path / "0" / "t.safetensors") == {"seq_len": 64, "shared": {"x": "y"}, "side": "general",
                                                               "tokens": 3072}
