"""Write tiny PyTorch checkpoints in both serialization layouts, for the torch-free loader tests.

Development tool only (needs torch). The state dict exercises what a loader can get wrong:
several dtypes, a non-contiguous (transposed) tensor, two tensors sharing one storage at
different offsets, a 0-d tensor and an empty one.

    /tmp/torchenv/bin/python scripts/dev/torch_checkpoint_fixtures.py

Writes tests/ai/fixtures/tiny_state_dict_{zip,legacy}.pth and tiny_state_dict.json (the
expected values).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parents[2] / "tests/ai/fixtures"


def state_dict() -> OrderedDict[str, torch.Tensor]:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 8
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    state["linear.weight"] = base
    state["linear.weight_t"] = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()
    state["linear.row"] = base[1]  # shares the storage of linear.weight, offset 4
    state["bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
    state["half"] = torch.tensor([0.5, -1.25, 3.0], dtype=torch.float16)
    state["double"] = torch.tensor([[1e-300, 2.5]], dtype=torch.float64)
    state["bytes"] = torch.tensor([0, 127, 255], dtype=torch.uint8)
    state["mask"] = torch.tensor([True, False, True])
    state["empty"] = torch.zeros(0, 4)
    return state


def main() -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    state = state_dict()
    torch.save(state, FIXTURES / "tiny_state_dict_zip.pth")
    torch.save(state, FIXTURES / "tiny_state_dict_legacy.pth", _use_new_zipfile_serialization=False)
    expected = {
        name: {
            "dtype": str(tensor.dtype).removeprefix("torch."),
            "shape": list(tensor.shape),
            "values": tensor.tolist(),
        }
        for name, tensor in state.items()
    }
    (FIXTURES / "tiny_state_dict.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote tiny checkpoints to {FIXTURES} with torch {torch.__version__}")


if __name__ == "__main__":
    main()
