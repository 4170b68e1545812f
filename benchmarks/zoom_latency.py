"""Cost of zoom on small objects: corrective clicks answered on a focus window vs on the whole slice.

Both sessions run in this process on the same slice with the same clicks (the shipped click adapter on the
bundled brain MR, lesion slice), alternating, so the ratio holds on a busy machine. Each repeat starts from a
fresh in-memory cache with the slice already embedded (as after the background precompute) and times every
corrective click: a click whose window is new pays one encoder pass, a click that keeps the window only decodes.
The lesion fills about 110 of the slice's 256 pixels, below the default zoom threshold, so the zoomed session
uses ``min_zoom=1.2``; the cost does not depend on the magnification (a window is always resized to the model
input).

A second part times a tight box on each structure of the held-out CT slice in ``../shared/data`` (15 structures,
ribs to lung lobes, on 181 x 258 pixels) with the default zoom and without: a box whose whole-slice answer is kept
costs one more check, one redone on a window one encoder pass. The whole slice comes from the precompute (seeded
into both sessions' caches before timing); Dice is scored against the reference.

    python benchmarks/zoom_latency.py [--repeats 10] [--device cpu] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from interactive_latency import timed_pair  # noqa: E402

from MedSAMAdapterLib.engine.cache import EmbeddingCache  # noqa: E402
from MedSAMAdapterLib.data.nnunet import open_dataset, read_case  # noqa: E402
from MedSAMAdapterLib.engine.focus import DEFAULT_FOCUS, FocusPolicy  # noqa: E402
from MedSAMAdapterLib.engine.prompts import SlicePrompts  # noqa: E402
from MedSAMAdapterLib.engine.session import InteractiveSession  # noqa: E402
from MedSAMAdapterLib.engine.volume import read_volume  # noqa: E402
from MedSAMAdapterLib.evaluation.clicks import tight_box  # noqa: E402
from MedSAMAdapterLib.evaluation.metrics import dice_score  # noqa: E402
from MedSAMAdapterLib.models.loading import open_model  # noqa: E402

SAMPLE = REPO / "Resources" / "Samples" / "brain_mr.nrrd"
SLICE = 14  # axial slice through the lesion (the demo's 3D box spans 11..17)
CLICKS = [(118, 186, 1), (100, 196, 1), (128, 176, 0), (90, 150, 0)]  # (row, col, positive) on that slice
ZOOM = FocusPolicy(margin=0.4, min_zoom=1.2, max_zoom=4)  # the lesion is mid-sized: zoom it anyway to time it
BOXES = (REPO.parent / "shared" / "data" / "Dataset106_CTSlices2D", "s0114_111")  # the held-out CT slice


def click_times(model, volume, focus: FocusPolicy | None) -> list[tuple[float, float]]:
    """(seconds, zoom) of each corrective click (clicks 2..N) in a fresh session."""
    session = InteractiveSession(volume, model, cache=EmbeddingCache(use_disk=False), focus=focus)
    session.embedder.embedding(0, SLICE)
    segment = session.add_segment("lesion")
    out = []
    for n in range(1, len(CLICKS) + 1):
        points = np.array([c[:2] for c in CLICKS[:n]], np.float32)
        labels = np.array([c[2] for c in CLICKS[:n]])
        start = time.perf_counter()
        result = session.segment_slice(segment, 0, SLICE, SlicePrompts(points, labels, None, use_previous_mask=True))
        if n > 1:
            out.append((time.perf_counter() - start, result.zoom))
    return out


class BoxBench:
    """A tight box on each structure of one 2D case, on a slice already embedded (as after the precompute)."""

    def __init__(self, model):
        dataset = open_dataset(BOXES[0])
        self.model, (self.volume, labels) = model, read_case(dataset, BOXES[1])
        labels = np.asarray(labels)
        self.truths = {name: labels[0] == value for name, value in dataset.labels.items() if (labels == value).any()}
        embedder = InteractiveSession(self.volume, model, cache=EmbeddingCache(use_disk=False)).embedder
        self.plane = embedder.embedding(0, 0)

    def run(self, focus: FocusPolicy | None) -> list[tuple[float, float, float]]:
        """(seconds, zoom, Dice) of each structure's box in a fresh session."""
        session = InteractiveSession(self.volume, self.model, cache=EmbeddingCache(use_disk=False), focus=focus)
        session.embedder.cache.put(session.embedder.key(0, 0), self.plane)
        out = []
        for name, truth in self.truths.items():
            segment = session.add_segment(name)
            start = time.perf_counter()
            result = session.segment_slice(segment, 0, 0, SlicePrompts(box_rc=tight_box(truth)))
            out.append((time.perf_counter() - start, result.zoom, dice_score(result.mask, truth)))
        return out


def box_report(model, repeats: int) -> dict:
    bench = BoxBench(model)
    runs: dict[str, list[list[tuple[float, float, float]]]] = {"zoom": [], "whole": []}
    timed_pair(lambda: runs["zoom"].append(bench.run(DEFAULT_FOCUS)), lambda: runs["whole"].append(bench.run(None)),
               repeats)
    zoom, whole = (list(zip(*v[2:])) for v in (runs["zoom"], runs["whole"]))  # per structure: its repeats
    zoomed = [i for i, boxes in enumerate(zoom) if boxes[0][1] > 1.0]
    kept = [i for i in range(len(zoom)) if i not in zoomed]

    def median_seconds(per_structure, indices):
        return statistics.median(t for i in indices for t, _, _ in per_structure[i]) if indices else float("nan")

    return {"case": BOXES[1], "structures": list(bench.truths), "zoomed": [list(bench.truths)[i] for i in zoomed],
            "zoom_policy": DEFAULT_FOCUS.__dict__ if DEFAULT_FOCUS else None,
            "seconds": {"zoom_on_zoomed": median_seconds(zoom, zoomed), "zoom_on_kept": median_seconds(zoom, kept),
                        "whole_same_boxes": median_seconds(whole, zoomed),
                        "whole_other_boxes": median_seconds(whole, kept)},
            "dice": {"zoom_on": float(np.mean([boxes[-1][2] for boxes in zoom])),
                     "whole": float(np.mean([boxes[-1][2] for boxes in whole]))}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)

    model = open_model("litemedsam", device=args.device)
    volume = read_volume(SAMPLE)
    runs: dict[str, list[list[tuple[float, float]]]] = {"zoom": [], "whole": []}
    timed_pair(lambda: runs["zoom"].append(click_times(model, volume, ZOOM)),
               lambda: runs["whole"].append(click_times(model, volume, None)), args.repeats)
    runs = {k: v[2:] for k, v in runs.items()}  # drop the two warm-up repeats timed_pair makes
    clicks = range(2, len(CLICKS) + 1)
    median = {k: [{"click": c, "seconds": statistics.median(r[i][0] for r in v), "zoom": v[0][i][1]}
                  for i, c in enumerate(clicks)] for k, v in runs.items()}
    report = {"machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
              "device": args.device, "repeats": args.repeats, "sample": SAMPLE.name, "slice": SLICE,
              "clicks": CLICKS, "zoom_policy": ZOOM.__dict__, "median": median}
    if BOXES[0].is_dir():
        report["boxes"] = box_report(model, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"zoom_latency_{args.device.split(':')[0]}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Zoom on small objects: corrective-click latency", "",
             f"{SAMPLE.name}, axial slice {SLICE}, shipped click adapter, {args.device}, "
             f"{report['torch_threads']} threads, median of {args.repeats}", "",
             "| click | whole slice | zoom on | ratio | zoom |", "|---:|---:|---:|---:|---:|"]
    for whole, zoom in zip(median["whole"], median["zoom"]):
        lines.append(f"| {whole['click']} | {whole['seconds'] * 1000:.0f} ms | {zoom['seconds'] * 1000:.0f} ms | "
                     f"{zoom['seconds'] / whole['seconds']:.1f}x | x{zoom['zoom']:.1f} |")
    if "boxes" in report:
        boxes, sec = report["boxes"], report["boxes"]["seconds"]
        lines += ["", f"Boxes on the {len(boxes['structures'])} structures of the held-out CT slice {boxes['case']} "
                  f"(slice already embedded), median of {args.repeats}; the default zoom redid "
                  f"{len(boxes['zoomed'])} of them on a window ({', '.join(boxes['zoomed'])}):", "",
                  "| boxes | whole slice | zoom on (default) | ratio |", "|---|---:|---:|---:|",
                  f"| redone on a window | {sec['whole_same_boxes'] * 1000:.0f} ms | "
                  f"{sec['zoom_on_zoomed'] * 1000:.0f} ms | {sec['zoom_on_zoomed'] / sec['whole_same_boxes']:.1f}x |",
                  f"| kept | {sec['whole_other_boxes'] * 1000:.0f} ms | {sec['zoom_on_kept'] * 1000:.0f} ms | "
                  f"{sec['zoom_on_kept'] / sec['whole_other_boxes']:.1f}x |",
                  f"| mean Dice | {boxes['dice']['whole']:.3f} | {boxes['dice']['zoom_on']:.3f} | |"]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
