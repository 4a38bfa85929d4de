"""monai_vlseg.utils.load_checkpoint: strict loading with a message that names the file and the mismatching keys."""

import ast
import os

import pytest
import torch
from torch import nn

import monai_vlseg.utils
from monai_vlseg.utils import load_checkpoint


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


@pytest.mark.parametrize("wrapped", [False, True])
def test_right_checkpoint_loads_bit_identically(tmp_path, wrapped):
    src = _net(0)
    src[1].running_mean.uniform_()
    path = tmp_path / "stage1.pt"
    torch.save({"model": src.state_dict()} if wrapped else src.state_dict(), path)
    dst = _net(1)
    assert not torch.equal(dst[0].weight, src[0].weight)
    assert load_checkpoint(dst, path) is dst
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k


def test_wrong_checkpoint_names_file_missing_and_unexpected_keys(tmp_path):
    state = _net(0).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["2.bias"], state["0.weight"]
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        load_checkpoint(_net(1), path)
    msg = str(err.value)
    assert "wrong.pt" in msg
    assert "missing keys 2 ('0.weight', '2.bias')" in msg
    assert "unexpected keys 1 ('extra.weight')" in msg


def test_shape_mismatch_and_many_keys_are_summarised(tmp_path):
    torch.save(nn.ModuleDict({f"l{i}": nn.Linear(2, 2) for i in range(5)}).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"missing keys 9 \('0.weight', '0.bias', '1.weight', \.\.\.\); unexpected keys 10"):
        load_checkpoint(_net(0), tmp_path / "other.pt")
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "shape.pt")
    with pytest.raises(ValueError, match=r"shape mismatches 1 \('weight: \(2, 3\) vs \(2, 2\)'\)"):
        load_checkpoint(nn.Linear(2, 2), tmp_path / "shape.pt")


def test_missing_file_raises_or_warns_and_skips(tmp_path):
    net = _net(0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(FileNotFoundError, match="none.pt' not found: run stage 1"):
        load_checkpoint(net, tmp_path / "none.pt", hint="run stage 1")
    with pytest.warns(UserWarning, match="none.pt' not found"):
        assert load_checkpoint(net, tmp_path / "none.pt", required=False) is net
    with pytest.warns(UserWarning, match="'None' not found"):
        load_checkpoint(net, None, required=False)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_unreadable_file_names_it(tmp_path):
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt' could not be read"):
        load_checkpoint(_net(0), tmp_path / "junk.pt")


def test_utils_imports_nothing_of_monai_vlseg():
    with open(monai_vlseg.utils.__file__, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] == "monai_vlseg"], names
    assert os.path.basename(monai_vlseg.utils.__file__) == "utils.py"
