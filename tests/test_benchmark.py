# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""scripts/benchmark.py on tiny cases: the measurement, the bundle inputs from metadata, failures as rows."""

from __future__ import annotations

import argparse
import importlib.util
import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_script", os.path.join(REPO, "scripts", "benchmark.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_measure_tiny_unet_counts_parameters_and_flops(bench):
    row = bench.measure({"kind": "unet", "channels": 1, "shape": [32, 32]}, repeats=1, batch=1, device="cpu", amp=False)
    from monai.networks.nets import UNet

    ref = UNet(2, 1, 1, channels=(32, 64, 128, 256, 512), strides=(2, 2, 2, 2), num_res_units=2)
    n = sum(p.numel() for p in ref.parameters())
    assert row["trainable_M"] == pytest.approx(n / 1e6) and row["total_M"] == pytest.approx(n / 1e6)
    assert row["gflops"] > 0 and row["latency_ms"] > 0 and row["train_img_per_s"] > 0 and row["peak_mem_MiB"] > 0
    assert row["input"] == "1x32x32" and row["dims"] == 2
    # FLOPs scale with the pixel count for a fully convolutional network
    big = bench.measure({"kind": "unet", "channels": 1, "shape": [64, 64]}, repeats=1, batch=1, device="cpu", amp=False)
    assert big["gflops"] == pytest.approx(4 * row["gflops"], rel=0.01)


def test_scalar_handles_nested_outputs(bench):
    x = torch.randn(2, 1, 4, 4, requires_grad=True)
    loss = bench._scalar({"a": x, "b": (x * 2, [x + 1]), "n": torch.tensor([1, 2])})
    loss.backward()
    assert loss.ndim == 0 and x.grad is not None and x.grad.abs().sum() > 0


def test_plan_bundles_and_baselines_at_each_input_size(bench):
    assert "ua_vls" in bench.discover_bundles()
    assert bench.image_input("ua_vls") == (1, (224, 224))
    assert bench.image_input("ua_vls", "demo") == (1, (96, 96))
    specs = bench.plan(["ua_vls", "unet", "swin_unetr"], "paper")
    assert [s["kind"] for s in specs] == ["bundle", "unet", "swin_unetr"]
    assert specs[1]["shape"] == [224, 224] and specs[1]["channels"] == 1
    with pytest.raises(ValueError, match="divisible by 32"):
        bench.build_baseline("swin_unetr", 1, (40, 40))


def test_bundle_inputs_follow_metadata_and_failures_become_rows(bench, tmp_path):
    net, args, desc = bench.build_bundle("ua_vls", "demo")
    assert desc == "1x96x96 + 34 text tokens"
    assert [tuple(a.shape) for a in args] == [(1, 1, 96, 96), (1, 34), (1, 34)]
    assert args[1].dtype == torch.int64 and int(args[2].sum()) > 2  # real tokens of the example report
    with torch.no_grad():
        assert net.eval()(*args).shape == (1, 1, 96, 96)
    a = argparse.Namespace(batch=1, batch_3d=1, repeats=1, device="cpu", precision="fp32", timeout=120)
    row = bench.run_spec({"kind": "bundle", "name": "no_such_bundle", "variant": "paper", "size": [1, [32, 32]]}, a)
    assert row["kind"] == "bundle" and "error" in row and row["error"]
    text = bench.markdown([row], argparse.Namespace(**vars(a), variant="paper"), "python scripts/benchmark.py")
    assert "| no_such_bundle |" in text and "failed:" in text and "torch threads" in text
    png = bench.plot([row], str(tmp_path / "p.png"), str(tmp_path / "none.json"))
    assert os.path.getsize(png) > 1000


def test_demo_accuracy_curves_from_log_and_table(tmp_path):
    spec = importlib.util.spec_from_file_location("demo_accuracy_script", os.path.join(REPO, "scripts", "demo_accuracy.py"))
    da = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(da)
    log = tmp_path / "train.log"
    log.write_text(
        "2026-01-01 - INFO - Epoch: 1/2, Iter: 1/2 -- train_loss: 1.0 \n"
        "2026-01-01 - INFO - Epoch: 1/2, Iter: 2/2 -- train_loss: 0.5 \n"
        "2026-01-01 - INFO - Epoch[1] Metrics -- val_mean_dice: 0.2000 val_mean_iou: 0.1\n"
        "2026-01-01 - INFO - Epoch: 2/2, Iter: 1/2 -- train_loss: 0.25 \n"
        "2026-01-01 - INFO - Epoch[2] Metrics -- val_mean_dice: 0.4000 \n"
    )
    curves = da.read_curves(str(tmp_path / "no_events"), str(log))  # no TensorBoard files: the log is parsed
    assert curves == {"loss": [(1, 0.75), (2, 0.25)], "val_dice": [(1, 0.2), (2, 0.4)]}
    assert os.path.getsize(da.plot_curves("x", curves, str(tmp_path / "c.png"))) > 1000
    assert da.is_text_guided("ua_vls")
    row = {"bundle": "x", "text_guided": True, "test": {"val_mean_dice": 0.7, "val_mean_iou": 0.5, "val_hd95": 3.0},
           "test_shuffled_text": {"val_mean_dice": 0.6}, "dice_drop_shuffled": 0.1, "epochs": 2, "train_time_s": 120.0,
           "curves_png": "c.png", "train_command": "python -m monai.bundle run training"}  # fmt: skip
    bad = {"bundle": "y", "text_guided": False, "error": "training failed (exit 1)"}
    text = open(da.write_table({"x": row, "y": bad}, str(tmp_path), "cmd")).read()
    assert "| x | yes | 0.700 | 0.500 | 3.0 | — | — | 0.600 | 0.100 | 2 | 2.0 |" in text
    assert "| y | no |" in text and "training failed" in text


def test_main_writes_table_json_plot_and_merges(bench, tmp_path):
    import json

    out = tmp_path / "benchmarks.md"
    old = {"name": "ghost", "kind": "bundle", "spec": {"kind": "bundle", "name": "ghost", "size": [1, [8, 8]]},
           "error": "kept from an earlier run"}  # fmt: skip
    (tmp_path / "benchmarks.json").write_text(json.dumps({"rows": [old]}))
    rc = bench.main(["--nets", "unet", "--repeats", "1", "--batch", "1", "--out", str(out), "--merge", "--baseline-input", "1x64x64",
                     "--plot", str(tmp_path / "b.png")])  # fmt: skip
    assert rc == 0
    text = out.read_text()
    assert "| unet (2D 1x64x64) | 1x64x64 | 6.49 |" in text and "| ghost |" in text and "earlier runs kept" in text
    rows = json.loads((tmp_path / "benchmarks.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["ghost", "unet"] and rows[1]["gflops"] > 0.3
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_demo_accuracy_seed_table_marks_missed_targets():
    spec = importlib.util.spec_from_file_location("demo_accuracy_script", os.path.join(REPO, "scripts", "demo_accuracy.py"))
    da = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(da)

    def run(dice, reworded, drop, negated, count, lat):
        return {"test": {"val_mean_dice": dice, "val_count_accuracy": count, "val_laterality_accuracy": lat},
                "test_reworded": {"val_mean_dice": reworded}, "test_negated": {"val_negated_area": negated},
                "dice_drop_shuffled": drop, "date": "d", "seed": 1, "train_command": "python ... --seed 1"}  # fmt: skip

    lines = da.seed_table({"b": {"0": run(0.8, 0.79, 0.4, 0.01, 0.95, 1.0), "1": run(0.8, 0.7, 0.2, 0.1, 0.8, 0.9)},
                           "image_only": {"0": {"test": {"val_mean_dice": 0.5}}}})  # fmt: skip
    text = "\n".join(lines)
    assert "| b | 0 | 0.800 | 0.790 | 0.400 | 0.010 | 0.950 | 1.000 | none | d |" in text
    assert ("| b | 1 | 0.800 | 0.700 | 0.200 | 0.100 | 0.800 | 0.900 | reworded within 0.05, shuffled >= 0.3 lower, "
            "negated area < 0.05, count >= 0.9, laterality >= 0.95 | d |") in text
    assert "image_only" not in text and "--seed 1" in text
    assert da.seed_table({"image_only": {"0": {"test": {}}}}) == []


def test_demo_accuracy_keeps_rows_another_run_wrote_meanwhile(tmp_path, monkeypatch):
    """Two runs at once (other bundles, other seeds) share docs/demo_accuracy.json: each writes only its own rows
    into what the file holds when it writes."""
    import json

    spec = importlib.util.spec_from_file_location("demo_accuracy_script", os.path.join(REPO, "scripts", "demo_accuracy.py"))
    da = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(da)
    store = tmp_path / "demo_accuracy.json"
    store.write_text(json.dumps({"rows": {"c2seg": {"bundle": "c2seg", "date": "old"}}, "seed_rows": {}}))

    def fake_run(name, args, seed=None):
        other = json.loads(store.read_text())  # meanwhile another run finished a bundle and a seed
        other["rows"]["lcpdn"] = {"bundle": "lcpdn", "date": "other run"}
        other["seed_rows"]["lcpdn"] = {"1": {"bundle": "lcpdn", "date": "other run"}}
        store.write_text(json.dumps(other))
        return {"bundle": name, "date": f"this run, seed {seed}", "seed": seed}

    monkeypatch.setattr(da, "run_bundle", fake_run)
    monkeypatch.setattr(da, "discover", lambda names: list(names))
    assert da.main(["--bundles", "ua_vls", "--seeds", "0", "1", "--docs", str(tmp_path)]) == 0
    saved = json.loads(store.read_text())
    assert {n: r["date"] for n, r in saved["rows"].items()} == {
        "c2seg": "old", "lcpdn": "other run", "ua_vls": "this run, seed 0"}  # fmt: skip
    assert sorted(saved["seed_rows"]["ua_vls"]) == ["0", "1"] and saved["seed_rows"]["lcpdn"]["1"]["date"] == "other run"
