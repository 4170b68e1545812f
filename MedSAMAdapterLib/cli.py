"""``medsam-adapter`` command line: info, embed, segment, evaluate, finetune, auto, train-auto, distill, serve, demo.

A thin shell: parse arguments, convert coordinates with ``engine.geometry``, call the engine, print results.
Usage errors and every ``MedSAMAdapterError`` exit with code 2 and one readable message, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from . import __version__
from .engine.focus import DEFAULT_FOCUS, FocusPolicy
from .errors import InputError, MedSAMAdapterError

EXIT_USAGE = 2
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "Resources" / "Samples"
VIEW_NAMES = ("axial", "coronal", "sagittal")


COORDINATE_OPTIONS = ("--point", "--negative", "--box")


def join_coordinate_values(argv: Sequence[str]) -> list[str]:
    """``--point -16,-16,6`` -> ``--point=-16,-16,6``: argparse would read a negative RAS value as an option."""
    joined: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token in COORDINATE_OPTIONS:
            value = next(tokens, None)
            joined.append(token if value is None else f"{token}={value}")
        else:
            joined.append(token)
    return joined


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    from .training.cli_finetune import route_autosam_recipes

    argv = route_autosam_recipes(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(join_coordinate_values(argv))
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.handler(args) or 0)
    except MedSAMAdapterError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# --- parser ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsam-adapter", description="Segment Anything adapted to medical images")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(metavar="COMMAND")

    info = commands.add_parser("info", help="models, weights found, devices, cache folder")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(handler=run_info)

    embed = commands.add_parser("embed", help="precompute slice embeddings of a volume into the disk cache")
    _add_model_args(embed)
    embed.add_argument("volume", type=Path)
    embed.add_argument("--axis", default="axial", help="axial|coronal|sagittal or 0|1|2 (numpy axis)")
    embed.set_defaults(handler=run_embed)

    segment = commands.add_parser("segment", help="segment one object from clicks and/or a box")
    _add_model_args(segment)
    segment.add_argument("volume", type=Path, help="NIfTI, NRRD, MHA, DICOM folder, PNG/JPG")
    segment.add_argument("-o", "--output", type=Path, required=True, help=".seg.nrrd, .nii.gz, .nrrd, .mha or .png")
    segment.add_argument("--point", action="append", default=[], metavar="X,Y[,Z]", help="positive click")
    segment.add_argument("--negative", action="append", default=[], metavar="X,Y[,Z]", help="negative click")
    segment.add_argument("--box", metavar="X0,Y0[,Z0],X1,Y1[,Z1]",
                         help="box corners; corners on different slices make a 3D box (slice range)")
    segment.add_argument("--coords", choices=("ijk", "ras", "lps"), default="ijk",
                         help="coordinates of --point/--box: voxel indices (default) or physical mm")
    segment.add_argument("--axis", default="axial", help="slice orientation: axial|coronal|sagittal or 0|1|2")
    segment.add_argument("--propagate", action="store_true", help="continue through neighbouring slices")
    segment.add_argument("--name", default="segment",
                         help="segment name written into .seg.nrrd; also the text prompt when the adapter knows it "
                              "(e.g. optic_cup, liver: `medsam-adapter info` lists the names)")
    add_names_argument(segment)
    add_focus_argument(segment)
    segment.add_argument("--overlay", type=Path, help="overlay PNG path (default: beside the output)")
    segment.set_defaults(handler=run_segment)

    evaluate = commands.add_parser("evaluate", help="score a model on an nnU-Net raw dataset folder")
    _add_model_args(evaluate)
    evaluate.add_argument("dataset", type=Path)
    evaluate.add_argument("--protocol", choices=("box", "clicks", "auto"), default="box",
                          help="box / clicks: simulated prompts on --model (a registry name); auto: --model is an "
                               "automatic model file (2D head, AutoProSAM or distilled student)")
    evaluate.add_argument("--out", type=Path, required=True, help="folder for summary.json, report.md, plots")
    evaluate.add_argument("--max-cases", type=int)
    evaluate.add_argument("--cases", nargs="*", help="only these case names")
    evaluate.add_argument("--region", action="append", default=[], metavar="NAME=LABEL[,LABEL...]",
                          help="score a union of labels instead of the labels (repeatable; labels by value or "
                               "name), e.g. --region optic_disc=1,2 --region optic_cup=2")
    add_names_argument(evaluate)
    add_focus_argument(evaluate)
    from .training.cli_auto import add_auto_inference_arguments

    add_auto_inference_arguments(evaluate)
    evaluate.set_defaults(handler=run_evaluate)

    from .training.cli_auto import add_auto_parsers
    from .training.cli_finetune import add_finetune_parser

    from .training.cli_volumetric import add_distill_parser

    add_finetune_parser(commands)
    add_auto_parsers(commands)
    add_distill_parser(commands)

    serve = commands.add_parser("serve", help="browser viewer (trame-slicer): click / box / propagate in a web page")
    serve.add_argument("volumes", nargs="*", type=Path, metavar="VOLUME",
                       help="volumes to open (default: the bundled brain MR sample)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    serve.add_argument("--port", type=int, default=8080, help="port (0: any free port)")
    serve.add_argument("--token", help="access token the page URL must carry (?token=...); required off loopback")
    serve.add_argument("--data-dir", action="append", default=[], type=Path, metavar="DIR",
                       help="folder whose files the page may open and save into (repeatable)")
    serve.add_argument("--model", default="litemedsam", help="model name from `medsam-adapter info`")
    serve.add_argument("--adapter", help="adapter checkpoint (default: the model's shipped one; 'none' for none)")
    serve.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps")
    serve.add_argument("--intensity", default="auto", help="intensity policy, as for `segment`")
    serve.add_argument("--max-upload-mb", type=int, default=1024, help="largest upload accepted (default: 1024)")
    serve.add_argument("--torch-threads", type=int, help="CPU threads for the model (default: half the cores)")
    serve.add_argument("--work-dir", type=Path, help="uploads, downloads and fine-tune runs (default: a temp dir)")
    serve.set_defaults(handler=run_serve)

    demo = commands.add_parser("demo", help="segment the bundled sample MR volume and write outputs")
    _add_model_args(demo)
    demo.add_argument("--out", type=Path, default=Path("out/demo"))
    demo.set_defaults(handler=run_demo)
    return parser


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="litemedsam", help="model name from `medsam-adapter info`")
    parser.add_argument("--weights", type=Path, help="explicit weights file (overrides the search path)")
    parser.add_argument("--adapter", type=Path, help="adapter checkpoint (.safetensors with its .json model card)")
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps")
    parser.add_argument("--intensity", default="auto",
                        help="auto, minmax, percentile[:lo,hi], window:center,width, or a CT preset (ct-lung, ...)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the embedding disk cache")


# --- shared helpers ----------------------------------------------------------------------------------
def pick_device(name: str) -> str:
    import torch

    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise InputError("--device cuda was asked for but no CUDA GPU is visible to torch")
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def parse_axis(text: str, volume) -> int:
    from .engine import geometry

    if text in ("0", "1", "2"):
        return int(text)
    if text not in VIEW_NAMES:
        raise InputError(f"--axis must be one of {', '.join(VIEW_NAMES)} or 0/1/2, not {text!r}")
    return geometry.axis_for_view(volume.geometry, text)


def parse_numbers(text: str, counts: tuple[int, ...], what: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.replace(" ", "").split(",")], np.float64)
    except ValueError:
        raise InputError(f"{what} {text!r}: expected comma-separated numbers") from None
    if len(values) not in counts or not np.isfinite(values).all():
        raise InputError(f"{what} {text!r}: expected {' or '.join(map(str, counts))} finite numbers")
    return values


def to_ijk(points: np.ndarray, coords: str, volume) -> np.ndarray:
    """(N, 2|3) user points -> (N, 3) continuous voxel indices (a 2-number point means k = 0)."""
    if points.shape[1] == 2:
        if not volume.is_2d and coords == "ijk":
            raise InputError("a 3D volume needs X,Y,Z points (voxel i,j,k or physical mm)")
        points = np.concatenate([points, np.zeros((len(points), 1))], axis=1)
    if coords == "ras":
        return volume.geometry.ras_to_ijk(points)
    if coords == "lps":
        return volume.geometry.lps_to_ijk(points)
    return points


def add_names_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-names", dest="names_as_text", action="store_false",
                        help="do not use structure names as text prompts (by default a name the adapter was "
                             "trained on goes with the clicks / box, e.g. to tell the optic cup from the disc)")


def add_focus_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--focus", default=None,
                        metavar="on|off|margin=M,min_zoom=A,max_zoom=B,box_min_zoom=C,max_spill=S",
                        help="answer a box whose answer leaks out of it, and corrective clicks, on a small object on "
                             "a zoomed window around it (one more encoder pass per window; engine/focus.py); default: "
                             f"{'on' if DEFAULT_FOCUS is not None else 'off'}, as in Slicer and the web app")


def load_session(args, volume):
    from .engine.cache import EmbeddingCache
    from .engine.preprocessing import IntensityPolicy
    from .engine.session import InteractiveSession
    from .models.loading import open_model

    model = open_model(args.model, weights=args.weights, adapter=args.adapter, device=pick_device(args.device))
    cache = None if args.no_cache else EmbeddingCache()
    return InteractiveSession(volume, model, cache=cache, intensity=IntensityPolicy.parse(args.intensity),
                              names_as_text=getattr(args, "names_as_text", True),
                              focus=FocusPolicy.parse(getattr(args, "focus", None)))


def progress_bar(description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    transient=False)


# --- commands ----------------------------------------------------------------------------------------
def run_info(args) -> int:
    import torch

    from .engine.cache import default_cache_dir
    from .models.registry import describe_weights, list_models

    rows = [describe_weights(name) | default_adapter_summary(name) for name in list_models()]
    devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    report = {"version": __version__, "torch": torch.__version__, "devices": devices,
              "cache_dir": str(default_cache_dir()), "models": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"medsam-adapter {__version__}  torch {torch.__version__}  devices: {', '.join(devices)}")
    print(f"embedding cache: {report['cache_dir']}")
    for row in rows:
        status = f"found  {row['path']}" if row["found"] else f"MISSING  ({row['hint']})"
        print(f"  {row['name']:<16} {row['architecture']:<10} {row['image_size']:>5}px  {status}")
        if row.get("default_adapter"):
            names = row["text_prompts"]
            print(f"    default adapter {Path(row['default_adapter']).name}; text prompts: "
                  + (", ".join(names) if names else "none"))
    return 0


def default_adapter_summary(model_name: str) -> dict:
    """The shipped adapter a model gets by default and the structure names it takes as text prompts."""
    from .models.checkpoints import read_card
    from .models.loading import resolve_adapter

    path = resolve_adapter(model_name, None)
    if path is None:
        return {"default_adapter": None, "text_prompts": []}
    return {"default_adapter": str(path), "text_prompts": list(read_card(path)["peft"].get("text_vocabulary", []))}


def run_embed(args) -> int:
    from .engine.volume import read_volume

    volume = read_volume(args.volume)
    session = load_session(args, volume)
    axis = parse_axis(args.axis, volume)
    count = session.embedder.slice_count(axis)
    start = time.perf_counter()
    with progress_bar(f"embedding axis {axis}") as bar:
        task = bar.add_task("embed", total=count)
        computed = session.embedder.embed_indices(axis, range(count), lambda done, total: bar.update(task, completed=done))
    elapsed = time.perf_counter() - start
    rate = computed / elapsed if computed else float("nan")
    print(f"{count} slices ready ({computed} computed, {rate:.2f} slices/s)")
    return 0


def run_segment(args) -> int:
    from .engine.volume import read_volume

    volume = read_volume(args.volume)
    prompts = build_volume_prompts(args, volume)
    session = load_session(args, volume)
    axis = parse_axis(args.axis, volume)
    segment_id = session.add_segment(args.name)
    written = segment_with_prompts(session, segment_id, prompts, axis, args.propagate)
    mask = session.segment_mask(segment_id)
    write_outputs(session, args.output, args.overlay, axis)
    text = session.text_prompt(segment_id)
    if text:
        how = f"text prompt '{text}'"
    else:
        how = "no text prompt (" + ("name not known to the adapter" if args.names_as_text else "--no-names") + ")"
    print(f"segment '{args.name}': {int(mask.sum())} voxels on {len(written)} slice(s), {how} -> {args.output}")
    return 0


def build_volume_prompts(args, volume):
    from .engine.prompts import VolumePrompts

    point_count = (2, 3)
    positives = [parse_numbers(p, point_count, "--point") for p in args.point]
    negatives = [parse_numbers(p, point_count, "--negative") for p in args.negative]
    points = positives + negatives
    if not points and not args.box:
        raise InputError("give at least one --point or a --box")
    points_ijk = to_ijk(np.array(points).reshape(len(points), -1), args.coords, volume) if points else np.zeros((0, 3))
    labels = np.array([1] * len(positives) + [0] * len(negatives), np.int64)
    box = None
    if args.box:
        values = parse_numbers(args.box, (4, 6), "--box")
        corners = to_ijk(values.reshape(2, -1), args.coords, volume)
        box = (corners[0], corners[1])
    return VolumePrompts(points_ijk, labels, box)


def segment_with_prompts(session, segment_id: str, prompts, axis: int, propagate: bool) -> list[int]:
    """2D prompts on one slice (optionally propagated), or a 3D box over its slice range."""
    if prompts.box_ijk is not None and not len(prompts.points_ijk):
        first, last = prompts.box_range(axis)
        if last > first:
            _, slice_prompts = prompts.on_slice(axis)
            return _said_stops(session.segment_box_3d(segment_id, axis, slice_prompts.box_rc, first, last))
    result = session.segment_prompts(segment_id, prompts, axis)
    written = [result.index]
    if propagate and not session.volume.is_2d:
        written += _said_stops(session.propagate(segment_id, axis, result.index))
    return written


def _said_stops(outcome) -> list[int]:
    for stop in outcome.stops:
        print(f"propagation stopped at {stop}")
    return outcome.written


def write_outputs(session, output: Path, overlay: Path | None, axis: int) -> Path:
    from .engine.volume import write_label_map, write_overlay_png

    names = {s.label_value: s.name for s in session.segments.values()}
    colors = {s.label_value: s.color for s in session.segments.values()}
    labels = session.label_volume()
    write_label_map(labels, session.volume.geometry, output, segment_names=names, colors=colors)
    overlay = overlay or output.with_name(output.name.split(".")[0] + "_overlay.png")
    write_overlay_png(session.volume, labels, overlay, axis=axis, colors=colors)
    return overlay


def run_evaluate(args) -> int:
    from .data.nnunet import open_dataset, parse_regions
    from .engine.focus import FocusPolicy
    from .evaluation.protocols import evaluate_dataset

    regions = None
    if args.region:
        regions = parse_regions(args.region, open_dataset(args.dataset).labels)
    summary = evaluate_dataset(
        args.dataset, args.protocol, args.model, adapter=args.adapter, out_dir=args.out,
        cases=args.cases, max_cases=args.max_cases, device=pick_device(args.device), regions=regions,
        intensity=args.intensity, cache_on_disk=not args.no_cache, refine_boxes=args.refine_boxes,
        turn_search=args.turn_search, names_as_text=args.names_as_text, focus=FocusPolicy.parse(args.focus),
    )
    print(json.dumps(summary.get("overall", {}), indent=2))
    print(f"report: {args.out / 'report.md'}")
    return 0


def run_serve(args) -> int:
    from .web.security import check_bind

    check_bind(args.host, args.token)  # before importing trame-slicer: refusing needs none of it
    try:
        from .web.server import ServeOptions, serve
    except ImportError as error:
        raise InputError(f"the web viewer needs its extra: pip install 'medsam-adapter[web]' ({error})") from None
    return serve(ServeOptions(volumes=args.volumes, host=args.host, port=args.port, token=args.token,
                              data_dirs=args.data_dir, model=args.model, adapter=args.adapter, device=args.device,
                              intensity=args.intensity, max_upload_mb=args.max_upload_mb, work_dir=args.work_dir,
                              torch_threads=args.torch_threads))


def run_demo(args) -> int:
    """Segment the lesion in the bundled brain MR with one 3D box, as a new user's first run."""
    sample = SAMPLES_DIR / "brain_mr.nrrd"
    output = args.out / "brain_lesion.seg.nrrd"
    argv = [
        "segment", str(sample), "-o", str(output), "--box", "162,84,11,208,153,17",
        "--name", "lesion", "--model", args.model, "--device", args.device, "--intensity", args.intensity,
    ]
    if args.weights:
        argv += ["--weights", str(args.weights)]
    if args.adapter:
        argv += ["--adapter", str(args.adapter)]
    if args.no_cache:
        argv.append("--no-cache")
    code = main(argv)
    if code == 0:
        print(f"open {output} in 3D Slicer on top of {sample}, or look at {output.parent}/brain_lesion_overlay.png")
    return code


if __name__ == "__main__":
    sys.exit(main())
