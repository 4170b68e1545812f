"""Interactive latency of the engine vs segment-anything's SamPredictor driving the same LiteMedSAM weights.

Both run in this process on the same slices and the same box prompts, so the ratio is meaningful even when the
machine is busy. Reports medians (after warm-up) for:
  - prompt -> mask on an already embedded slice,
  - first prompt on a fresh slice (embedding + decoding),
  - whole-volume embedding throughput (slices/s).

    python benchmarks/interactive_latency.py [--volume PATH] [--repeats 20] [--device cpu] [--out benchmarks/results]
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

from MedSAMAdapterLib.engine import geometry  # noqa: E402
from MedSAMAdapterLib.engine.cache import EmbeddingCache  # noqa: E402
from MedSAMAdapterLib.engine.prompts import SlicePrompts  # noqa: E402
from MedSAMAdapterLib.engine.session import InteractiveSession  # noqa: E402
from MedSAMAdapterLib.engine.volume import read_volume  # noqa: E402
from MedSAMAdapterLib.models.registry import load_model  # noqa: E402


def timed_pair(ours, peer, repeats: int, warmup: int = 2) -> tuple[list[float], list[float]]:
    """Alternate the two runs so a busy machine slows both alike (shared CI/dev machines are noisy)."""
    for _ in range(warmup):
        ours()
        peer()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((ours, times[0]), (peer, times[1])):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return times


def _torchvision_stand_in() -> None:
    """segment-anything's predictor resizes with torchvision's ``resize(to_pil_image(x))``; torchvision is not a
    dependency here (it cannot even import beside the CPU torch build), so give it the same two PIL calls."""
    import types

    from PIL import Image

    if "torchvision" in sys.modules:
        return
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.to_pil_image = lambda array: Image.fromarray(np.asarray(array))
    functional.resize = lambda image, size: image.resize((size[1], size[0]), Image.BILINEAR)
    def unused(*_args, **_kwargs):
        raise RuntimeError("only the automatic mask generator needs torchvision.ops; the benchmark does not")

    boxes = types.ModuleType("torchvision.ops.boxes")
    boxes.batched_nms = boxes.box_area = unused
    modules = {name: types.ModuleType(name) for name in ("torchvision", "torchvision.transforms", "torchvision.ops")}
    for module in modules.values():
        module.__path__ = []  # a package, so submodule imports resolve through sys.modules
    modules.update({"torchvision.transforms.functional": functional, "torchvision.ops.boxes": boxes})
    sys.modules.update(modules)


def sam_predictor_for(model):
    """segment-anything's own predictor around our LiteMedSAM modules (uint8 in, /255 = LiteMedSAM's [0,1])."""
    _torchvision_stand_in()
    from segment_anything.modeling import Sam
    from segment_anything.predictor import SamPredictor

    sam = Sam(model.image_encoder, model.prompt_encoder, model.mask_decoder,
              pixel_mean=[0.0, 0.0, 0.0], pixel_std=[255.0, 255.0, 255.0]).eval()
    sam.image_encoder.img_size = model.spec.image_size
    return SamPredictor(sam)


def run(volume_path: Path, repeats: int, device: str) -> dict:
    torch.set_grad_enabled(False)
    volume = read_volume(volume_path)
    model = load_model("litemedsam", device=device)
    session = InteractiveSession(volume, model, cache=EmbeddingCache(use_disk=False))  # memory level only
    uncached = InteractiveSession(volume, model, cache=None)  # every prompt embeds its slice again
    axis, count = 0, volume.shape[0]
    center = count // 2
    plane_shape = geometry.slice_plane(volume.array, axis, center).shape[:2]
    h, w = plane_shape
    box = (h * 0.35, w * 0.35, h * 0.6, w * 0.6)
    segment = session.add_segment("bench")
    predictor = sam_predictor_for(model)
    planes = [np.repeat(geometry.slice_plane(session.embedder.display, axis, i).astype(np.uint8)[..., None], 3, 2)
              for i in range(count)]
    sam_box = np.array([box[1], box[0], box[3], box[2]])

    # prompt -> mask on an embedded slice
    session.embedder.embedding(axis, center)
    predictor.set_image(planes[center])
    ours_cached, peer_cached = timed_pair(
        lambda: session.segment_slice(segment, axis, center, SlicePrompts(box_rc=box)),
        lambda: predictor.predict(box=sam_box, multimask_output=False), repeats)

    # first prompt on a fresh slice: no cache, so every call embeds again
    fresh = max(3, repeats // 4)
    fresh_segment = uncached.add_segment("fresh")
    def peer_fresh():
        predictor.set_image(planes[center])
        predictor.predict(box=sam_box, multimask_output=False)

    ours_fresh, peer_fresh_times = timed_pair(
        lambda: uncached.segment_slice(fresh_segment, axis, center, SlicePrompts(box_rc=box)), peer_fresh,
        fresh, warmup=1)

    # whole-volume embedding throughput
    from MedSAMAdapterLib.engine.embedder import VolumeEmbedder

    start = time.perf_counter()
    VolumeEmbedder(volume, model, cache=None, batch_size=4).embed_indices(axis, range(count))
    ours_rate = count / (time.perf_counter() - start)
    start = time.perf_counter()
    for plane in planes:
        predictor.set_image(plane)
    peer_rate = count / (time.perf_counter() - start)

    med = lambda xs: statistics.median(xs) * 1000  # noqa: E731
    results = {
        "volume": str(volume_path), "shape": list(volume.shape), "device": device,
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "repeats": repeats,
        "prompt_to_mask_ms": {"ours": med(ours_cached), "sam_predictor": med(peer_cached)},
        "first_prompt_fresh_slice_ms": {"ours": med(ours_fresh), "sam_predictor": med(peer_fresh_times)},
        "volume_embedding_slices_per_s": {"ours": ours_rate, "sam_predictor": peer_rate},
    }
    for name, row in results.items():
        if isinstance(row, dict) and "ours" in row:
            row["ratio_ours_over_peer"] = row["ours"] / row["sam_predictor"]
    return results


def to_markdown(results: dict) -> str:
    lines = [
        f"# Interactive latency — LiteMedSAM, {results['device']}, {results['threads']} threads, torch {results['torch']}",
        "", f"Volume `{results['volume']}` {results['shape']}, medians over {results['repeats']} runs after warm-up.", "",
        "| measure | MedSAMAdapter | SamPredictor (same weights) | ratio ours/peer |", "|---|---|---|---|",
    ]
    for key, unit in (("prompt_to_mask_ms", "ms"), ("first_prompt_fresh_slice_ms", "ms"),
                      ("volume_embedding_slices_per_s", "slices/s")):
        row = results[key]
        lines.append(f"| {key} | {row['ours']:.1f} {unit} | {row['sam_predictor']:.1f} {unit} | "
                     f"{row['ratio_ours_over_peer']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volume", type=Path, default=REPO / "Resources" / "Samples" / "brain_mr.nrrd")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    results = run(args.volume, args.repeats, args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"interactive_latency_{args.device.replace(':', '')}"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"{stem}.md").write_text(to_markdown(results))
    print(to_markdown(results))


if __name__ == "__main__":
    main()
