"""Run ``finetune`` or ``train-auto`` on cases packed by ``pack_cases.py`` (a GPU worker without SimpleITK).

The arguments are those of the CLI subcommand, with the packed .npz in place of the dataset folder(s); the split
stored in the file is used as is. Example (see scripts/gpu/README.md):

    python scripts/gpu/train_packed.py finetune runs/gpu/cases2d.npz --out $OUT/click --recipe decoder ...
    python scripts/gpu/train_packed.py train-auto runs/gpu/acdc.npz --out $OUT/acdc --head vit ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from MedSAMAdapterLib.engine.volume import Volume
from MedSAMAdapterLib.training.datasets import RegionMatcher, SliceDataset, TrainingCase, make_case


def read_packed(path: Path, intensity: str, wanted: set[str] | None = None,
                regions: list[str] | None = None) -> tuple[list, list, dict]:
    """(train cases, val cases, per-dataset meta) of a packed file; ``wanted``: dataset names to keep;
    ``regions``: ``finetune --region`` items, each applied to the datasets that have its labels."""
    data = np.load(path)
    meta = json.loads(bytes(data["meta"]).decode())
    train: list[TrainingCase] = []
    val: list[TrainingCase] = []
    matcher = RegionMatcher(regions or ())
    for d in meta["datasets"]:
        if wanted and d["name"] not in wanted:
            continue
        names = {int(v): n for v, n in d["labels"].items()}
        region_names, region_values = matcher.labels_of({n: v for v, n in names.items()})
        if region_values is not None:
            names, d["regions"] = region_names, {region_names[i]: list(v) for i, v in region_values.items()}
        for case in d["train_cases"] + d["val_cases"]:
            key = f"{d['name']}/{case}"
            volume = Volume(data[key + "/image"].astype(np.float32), is_rgb=bool(data[key + "/rgb"]), source=case)
            made = make_case(case, volume, data[key + "/labels"], names.keys(), d["name"], intensity, names,
                             region_values)
            (train if case in d["train_cases"] else val).append(made)
    matcher.check()
    return train, val, meta


def run_finetune(args: argparse.Namespace) -> int:
    from MedSAMAdapterLib.training.cli_finetune import RichProgress, config_from_args
    from MedSAMAdapterLib.training.trainer import Trainer

    config = config_from_args(args)
    train, val, meta = read_packed(args.datasets[0], config.intensity, regions=args.region)
    train_set = SliceDataset(train, args.seed, 0.8, 2, name="training")
    val_set = SliceDataset(val, args.seed, 1.0, 0, name="validation")
    description = {"source": "packed nnunet (scripts/gpu/pack_cases.py)", "datasets": meta["datasets"],
                   "train": train_set.describe(), "val": val_set.describe()}
    trainer = Trainer(config, train_set, val_set, args.out, data_description=description)
    with RichProgress() as display:
        trainer.fit(progress=display, resume=args.resume)
    print(json.dumps(trainer.best, default=str))
    return 0


def run_train_auto(args: argparse.Namespace) -> int:
    from MedSAMAdapterLib.training.auto_train import train_auto
    from MedSAMAdapterLib.training.cli_auto import AutoRichProgress, config_from_args

    config = config_from_args(args) if args.arch != "autoprosam" else None
    intensity = config.intensity if config else args.intensity
    train, val, meta = read_packed(args.dataset, intensity)
    if args.train_cases:  # a few-shot subset of the packed training patients
        from MedSAMAdapterLib.training.cli_finetune import comma_items
        from MedSAMAdapterLib.training.splits import SplitOptions, choose_split

        options = SplitOptions(0.0, train_cases=tuple(comma_items(args.train_cases)))
        keep = set(choose_split([c.case_id for c in train], options)[0])
        train = [c for c in train if c.case_id in keep]
    d = meta["datasets"][0]
    labels = {int(v): n for v, n in d["labels"].items()}
    description = {"source": "packed nnunet (scripts/gpu/pack_cases.py)", "dataset": d["name"], **d,
                   "train_cases": [c.case_id for c in train]}
    if args.arch == "autoprosam":
        from MedSAMAdapterLib.training.cli_volumetric import volumetric_config
        from MedSAMAdapterLib.training.volumetric_train import VolumetricTrainer

        trainer = VolumetricTrainer(volumetric_config(args, "autoprosam", {"depth_window": args.depth_window}),
                                    train, val, args.out, labels, data_description=description)
        with AutoRichProgress() as display:
            trainer.fit(progress=display)
        print(json.dumps(trainer.best, default=str))
        return 0
    with AutoRichProgress() as display:
        result = train_auto(config, train, val, args.out, labels, progress=display, data_description=description)
    print(json.dumps(result.best, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    from MedSAMAdapterLib.training.cli_auto import add_auto_parsers
    from MedSAMAdapterLib.training.cli_finetune import add_finetune_parser

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_finetune_parser(sub).set_defaults(handler=run_finetune)
    add_auto_parsers(sub)
    sub.choices["train-auto"].set_defaults(handler=run_train_auto)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
