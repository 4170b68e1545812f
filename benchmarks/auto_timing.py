"""Automatic segmentation of one 3D volume, side by side in one process: a teacher against its distilled student,
and/or a 2D-head model with and without box refinement (``--refine-boxes``, ``engine/refine.py``), and/or with and
without turn search (``--turn-search``: the four quarter turns of each plane, ``engine/auto.py``).

All runs segment the same volume on the same device and alternate (teacher, student, teacher, ...) so a busy
machine slows them alike. Every run starts from an empty in-memory embedding cache, as on a volume never seen
before. Reports median seconds per volume after warm-up, the first/last time ratio, and each run's Dice per class
against the case's ground truth. Runs on the CPU and, when torch sees one, on CUDA.

    python benchmarks/auto_timing.py --teacher RUN/auto_model [--student models/student] [--refine-boxes] \\
        [--turn-search] \\
        [--data ../shared/data/Dataset001_ACDC] [--case patient002_frame01] [--repeats 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from MedSAMAdapterLib.data.nnunet import open_dataset, read_case  # noqa: E402
from MedSAMAdapterLib.engine.auto import AutoSegmenter, open_box_refiner  # noqa: E402
from MedSAMAdapterLib.engine.cache import EmbeddingCache  # noqa: E402
from MedSAMAdapterLib.training.common import dice_np  # noqa: E402


def alternate(runs: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of every run, interleaved; ``warmup`` untimed rounds first (allocator, kernels, caches)."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def run(models: dict[str, Path], data: Path, case: str | None, repeats: int, device: str,
        refine: set[str] = frozenset(), turns: dict[str, bool] | None = None) -> dict[str, Any]:
    """``models``: {run name: model path}; run names in ``refine`` segment with box refinement (base model);
    ``turns``: {run name: turn search on / off} (runs not named: as their card says)."""
    dataset = open_dataset(data)
    case = case or sorted(dataset.cases)[0]
    volume, truth = read_case(dataset, case)
    segmenters = {name: AutoSegmenter(path, device, cache=EmbeddingCache(use_disk=False),
                                      turn_search=(turns or {}).get(name)) for name, path in models.items()}
    labels = {int(c.label_value): c.name for c in next(iter(segmenters.values())).classes}
    outputs: dict[str, np.ndarray] = {}

    def runner(name: str) -> Callable[[], Any]:
        segmenter = segmenters[name]

        def go() -> None:
            segmenter.cache = EmbeddingCache(use_disk=False)  # embed again, as on a volume never seen before
            outputs[name] = segmenter.predict(volume, refiner=open_box_refiner(segmenter) if name in refine else None)
        return go

    times = alternate({name: runner(name) for name in segmenters}, repeats)
    rows = {}
    for name, seg in segmenters.items():
        dice = {n: dice_np(outputs[name] == v, np.asarray(truth) == v) for v, n in labels.items()}
        params = sum(p.numel() for p in (seg.volumetric.network if seg.volumetric else seg.head.head).parameters())
        rows[name] = {"model": str(models[name]), "kind": seg.kind, "parameters": params,
                      "median_s": statistics.median(times[name]), "runs_s": times[name], "dice": dice,
                      "dice_mean": float(np.mean(list(dice.values()))), "turn_search": seg.turn_search,
                      "turned_degrees": 90 * seg.last_turns if seg.turn_search else None}
    names = list(rows)
    return {"device": device, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "platform": platform.platform(), "dataset": dataset.name, "case": case, "shape": list(volume.shape),
            "repeats": repeats, "models": rows,
            "ratio_first_over_second": rows[names[0]]["median_s"] / rows[names[-1]]["median_s"]}


def to_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Automatic segmentation timing - {result['device']}, {result['threads']} threads, torch "
             f"{result['torch']}", "",
             f"{result['dataset']} `{result['case']}` {result['shape']} (k, j, i); median of {result['repeats']} "
             f"alternating runs after one warm-up.", "",
             "| model | kind | parameters | turn search | median s / volume | Dice per class | mean Dice |",
             "|---|---|---:|---|---:|---|---:|"]
    for name, row in result["models"].items():
        dice = ", ".join(f"{k} {v:.3f}" for k, v in row["dice"].items())
        searched = "off" if not row.get("turn_search") else f"on (turned {row.get('turned_degrees')} deg)"
        lines.append(f"| {name} | {row['kind']} | {row['parameters']:,} | {searched} | {row['median_s']:.2f} | "
                     f"{dice} | {row['dice_mean']:.3f} |")
    names = list(result["models"])
    lines += ["", f"{names[0]} / {names[-1]} time ratio: **{result['ratio_first_over_second']:.2f}x**", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--student", type=Path, help="a distilled student to race against the teacher")
    parser.add_argument("--refine-boxes", action="store_true",
                        help="also run the teacher (a 2D head) with box refinement by its base model")
    parser.add_argument("--turn-search", action="store_true",
                        help="run the teacher without and with turn search (the four quarter turns of each plane)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "Dataset001_ACDC")
    parser.add_argument("--case")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", nargs="*", help="default: cpu, plus cuda when available")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.student or args.refine_boxes or args.turn_search):
        parser.error("give --student, --refine-boxes, --turn-search or several")
    models = {"teacher": args.teacher}
    turns = {"teacher": False, "teacher + turns": True} if args.turn_search else {}
    if args.turn_search:
        models["teacher + turns"] = args.teacher
    if args.refine_boxes:
        models["teacher + boxes"] = args.teacher
    if args.student:
        models["student"] = args.student
    suffix = "".join(s for s, on in (("_turns", args.turn_search), ("_refine", args.refine_boxes)) if on)
    suffix = "" if args.student else suffix
    for device in devices:
        result = run(models, args.data, args.case, args.repeats, device, {"teacher + boxes"}, turns)
        stem = args.out / f"auto_timing{suffix}_{device.split(':')[0]}"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        stem.with_suffix(".md").write_text(to_markdown(result))
        print(to_markdown(result))


if __name__ == "__main__":
    main()
