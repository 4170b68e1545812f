"""Pack nnU-Net cases into one compressed .npz for a GPU worker that has torch but not SimpleITK.

Training on a lent GPU machine (see scripts/gpu/README.md): the machine cannot reach the network and gets only
the working tree, so the cases travel as arrays. 2D pictures are shrunk to ``--max-side`` (LiteMedSAM sees
256 px anyway); 3D volumes keep their grid and are stored as float16. The train / validation split is made
here with the same functions the CLI uses (``split_cases`` seed 0, or the few-shot ``build_auto_split``), and
written into the file, so results on the GPU refer to the same held-out cases as ``medsam-adapter evaluate``.

    python scripts/gpu/pack_cases.py ../shared/data/Dataset101_BUSI ... -o runs/gpu/cases2d.npz
    python scripts/gpu/pack_cases.py ../shared/data/Dataset001_ACDC --train-patients 1 --val-patients 10 -o ...
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import torch

from MedSAMAdapterLib.data.nnunet import open_dataset, read_case, split_cases
from MedSAMAdapterLib.engine.preprocessing import resize_bilinear


def shrink_picture(image: np.ndarray, labels: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """One-slice picture (1, H, W[, 3]) resized so its longest side is ``max_side`` (labels: nearest)."""
    h, w = labels.shape[1:3]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image, labels
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    plane = torch.from_numpy(image[0].astype(np.float32))
    chw = plane.permute(2, 0, 1) if plane.ndim == 3 else plane[None]
    small = resize_bilinear(chw[None], size)[0]
    small = (small.permute(1, 2, 0) if plane.ndim == 3 else small[0]).numpy()
    rows = np.minimum((np.arange(size[0]) + 0.5) / scale, h - 1).astype(int)
    cols = np.minimum((np.arange(size[1]) + 0.5) / scale, w - 1).astype(int)
    return np.clip(np.round(small), 0, 255)[None], labels[:, rows][:, :, cols]


def choose_cases(root: Path, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    if args.train_patients or args.val_patients:
        from MedSAMAdapterLib.training.splits import SplitOptions, choose_split

        return choose_split(open_dataset(root).cases, SplitOptions(seed=args.seed, max_train_patients=args.train_patients,
                                                                   val_patients=args.val_patients))
    return split_cases(open_dataset(root), args.val_fraction, args.seed)


def pack(args: argparse.Namespace) -> None:
    arrays: dict[str, np.ndarray] = {}
    meta: dict = {"datasets": []}
    for root in args.datasets:
        dataset = open_dataset(root)
        train, val = choose_cases(root, args)
        for case in train + val:
            image, labels = read_case(dataset, case)
            array, label_map = image.array, labels.astype(np.uint8)
            if image.is_2d and args.max_side:
                array, label_map = shrink_picture(array, label_map, args.max_side)
            if args.uint8 and not image.is_2d:  # the model sees 8-bit display values anyway
                lo, hi = float(array.min()), float(array.max())
                array = np.round((array - lo) / max(hi - lo, 1e-12) * 255)
            integral = np.all(array == np.round(array)) and array.min() >= 0 and array.max() <= 255
            key = f"{dataset.name}/{case}"
            arrays[key + "/image"] = array.astype(np.uint8 if integral else np.float16)
            arrays[key + "/labels"] = label_map
            arrays[key + "/rgb"] = np.asarray(image.is_rgb)
        meta["datasets"].append({
            "name": dataset.name, "labels": {str(v): n for n, v in dataset.labels.items() if v},
            "train_cases": train, "val_cases": val, "licence": dataset.metadata.get("licence"),
            "root": str(Path(root).resolve()),
        })
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(buffer.getvalue())
    print(f"{args.output}: {len(buffer.getvalue()) / 2**20:.1f} MiB, "
          + ", ".join(f"{d['name']} {len(d['train_cases'])}+{len(d['val_cases'])}" for d in meta["datasets"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("datasets", nargs="+", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--max-side", type=int, default=256, help="shrink 2D pictures to this longest side (0: keep)")
    p.add_argument("--uint8", action="store_true", help="store 3D volumes min-max scaled to 8 bits (smaller)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-patients", type=int, help="few-shot: first N training patients (build_auto_split)")
    p.add_argument("--val-patients", type=int, help="few-shot: hold out N patients (build_auto_split)")
    pack(p.parse_args())


if __name__ == "__main__":
    main()
