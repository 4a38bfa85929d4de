"""Forward + backward cost of the multi-direction cross-scan and merge (``monai_vlseg.ops.cross_scan``): the strided
views and flips it uses against a gather by :func:`scan_permutations` (one ``index_select`` to scan, one to merge).

Shapes are the SS2D inputs of VM-UNet's four stages at 256 px (d_inner = 2 x 96..768, grids 64..8) and SegMamba's
first two stages at a 128^3 patch. Both implementations run interleaved in one process; medians of ``--repeats``.

    .venv/bin/python scripts/bench_cross_scan.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from monai_vlseg.ops.cross_scan import CROSS_2D, CROSS_3D, cross_merge, cross_scan, scan_permutations  # noqa: E402

SHAPES = [("vm_unet stage 1", CROSS_2D, (1, 192, 64, 64)), ("vm_unet stage 2", CROSS_2D, (1, 384, 32, 32)),
          ("vm_unet stage 3", CROSS_2D, (1, 768, 16, 16)), ("vm_unet stage 4", CROSS_2D, (1, 1536, 8, 8)),
          ("segmamba stage 1", CROSS_3D, (1, 96, 32, 32, 32)), ("segmamba stage 2", CROSS_3D, (1, 192, 16, 16, 16))]  # fmt: skip


def gather_scan_merge(x: torch.Tensor, directions) -> torch.Tensor:
    """The permutation definition: gather every order, scatter back by the inverse index and sum."""
    b, c = x.shape[:2]
    perm, merge_index = scan_permutations(x.shape[2:], directions)
    k, n = perm.shape
    xs = torch.index_select(x.reshape(b, c, n), 2, perm.reshape(-1)).view(b, c, k, n).transpose(1, 2)
    flat = xs.transpose(1, 2).reshape(b, c, k * n)
    return torch.index_select(flat, 2, merge_index.reshape(-1)).view(b, c, k, n).sum(2)


def strided_scan_merge(x: torch.Tensor, directions) -> torch.Tensor:
    return cross_merge(cross_scan(x, directions), x.shape[2:], directions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print("| shape | directions | gather fwd+bwd ms | strided fwd+bwd ms | speed-up |")
    print("|---|---|---|---|---|")
    for name, directions, shape in SHAPES:
        x = torch.randn(*shape, requires_grad=True)
        torch.testing.assert_close(strided_scan_merge(x, directions), gather_scan_merge(x, directions))
        times = {"gather": [], "strided": []}
        for r in range(args.repeats + 1):
            for impl, fn in (("gather", gather_scan_merge), ("strided", strided_scan_merge)):
                t = time.perf_counter()
                fn(x, directions).sum().backward()
                if r:  # the first round warms up
                    times[impl].append(time.perf_counter() - t)
        g, s = (statistics.median(times[k]) * 1e3 for k in ("gather", "strided"))
        print(f"| {name} {tuple(shape)} | {len(directions)} | {g:.2f} | {s:.2f} | {g / s:.1f}x |")


if __name__ == "__main__":
    main()
