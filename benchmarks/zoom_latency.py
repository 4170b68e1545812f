"""Cost of zoom on small objects: corrective clicks answered on a focus window vs on the whole slice.

Both sessions run in this process on the same slice with the same clicks (the shipped click adapter on the
bundled brain MR, lesion slice), alternating, so the ratio holds on a busy machine. Each repeat starts from a
fresh in-memory cache with the slice already embedded (as after the background precompute) and times every
corrective click: a click whose window is new pays one encoder pass, a click that keeps the window only decodes.
The lesion fills about 110 of the slice's 256 pixels, below the default zoom threshold, so the zoomed session
uses ``min_zoom=1.2``; the cost does not depend on the magnification (a window is always resized to the model
input).

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
from MedSAMAdapterLib.engine.focus import FocusPolicy  # noqa: E402
from MedSAMAdapterLib.engine.prompts import SlicePrompts  # noqa: E402
from MedSAMAdapterLib.engine.session import InteractiveSession  # noqa: E402
from MedSAMAdapterLib.engine.volume import read_volume  # noqa: E402
from MedSAMAdapterLib.models.loading import open_model  # noqa: E402

SAMPLE = REPO / "Resources" / "Samples" / "brain_mr.nrrd"
SLICE = 14  # axial slice through the lesion (the demo's 3D box spans 11..17)
CLICKS = [(118, 186, 1), (100, 196, 1), (128, 176, 0), (90, 150, 0)]  # (row, col, positive) on that slice
ZOOM = FocusPolicy(min_zoom=1.2)


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
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
