"""``infnet-monai predict-slices`` and ``semi-propagate``: the network on 2D slice images, and
Semi-Inf-Net's pseudo-labelling of unlabelled slices."""

from __future__ import annotations

import argparse
from pathlib import Path

from infnet_monai.cli.arguments import add_class_arguments, add_model_arguments


def _predict_slices(args: argparse.Namespace) -> int:
    from infnet_monai.predict_slices import predict_slices

    written = predict_slices(
        args.inputs, args.output_dir, weights=args.weights, image_size=args.image_size, device=args.device,
        normalize=args.normalize, overwrite=args.overwrite, classes=args.classes, pattern_weights=args.pattern_weights,
    )
    print(f"{len(written)} maps written to {args.output_dir}")
    return 0


def add_predict_slices(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict-slices",
        help="run the network on 2D slice images (JPG/PNG) and write 8-bit probability maps <stem>.png "
        "at each image's size, as the authors' test script (score them with evaluate --mode slices)",
    )
    p.add_argument("inputs", metavar="IMAGES", help="a folder of slice images (e.g. COVID-SemiSeg Imgs/) or one image")
    p.add_argument("-o", "--output-dir", type=Path, required=True, help="folder for the <stem>.png maps")
    add_model_arguments(p)
    p.add_argument("--normalize", action="store_true",
                   help="min-max normalise each map as the authors' script does (default: probability x 255)")
    p.add_argument("--overwrite", action="store_true", help="replace existing maps")
    add_class_arguments(p, "GGO/<stem>.png and Consolidation/<stem>.png (class probability x 255) and "
                            "labels/<stem>.png (class indices 0/1/2)")
    p.set_defaults(func=_predict_slices)


def _semi_propagate(args: argparse.Namespace) -> int:
    from infnet_monai.semi import SemiInfNetPropagation

    names = ["group_size", "epochs_per_group", "initial_epochs", "image_size", "batch_size", "learning_rate",
             "multiscale_rates", "iterations_per_epoch"]  # fmt: skip
    settings = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    state = SemiInfNetPropagation(
        args.labeled,
        args.unlabeled,
        args.work_dir,
        settings=settings,
        seed=args.seed,
        initial_weights=args.initial_weights,
        device=args.device,
        num_workers=args.num_workers,
        resume=args.resume,
    ).run(max_groups=args.max_groups, progress=not args.quiet)
    print(
        f"{args.work_dir}: {state.groups_done}/{len(state.groups)} groups, {state.pseudo_count} slices "
        f"pseudo-labelled in {args.work_dir / state.pseudo_dir}, model {args.work_dir / state.checkpoint}"
    )
    return 0


def add_semi_propagate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "semi-propagate",
        help="Semi-Inf-Net: pseudo-label unlabelled slices group by group, fine-tuning Inf-Net after each group",
    )
    p.add_argument("--labeled", type=Path, required=True, help="labelled slices: a folder with Imgs/, GT/ (and Edge/)")
    p.add_argument("--unlabeled", type=Path, required=True, help="unlabelled slices: a folder with Imgs/")
    p.add_argument("--work-dir", type=Path, required=True, help="state, checkpoints and pseudo/{Imgs,GT,Edge}")
    p.add_argument("--group-size", type=int, help="slices added per round, K (default 5)")
    p.add_argument("--epochs-per-group", type=int, help="fine-tuning epochs after each group (default 10)")
    p.add_argument("--initial-epochs", type=int, help="epochs on the labelled set first (default 100)")
    p.add_argument("--initial-weights", help="start from these weights (e.g. models/model.pt) instead")
    p.add_argument("--size", dest="image_size", type=int,
                   help="training/prediction size in px, multiple of 32 (default 352)")
    p.add_argument("--batch-size", type=int, help="slices per batch (default 16)")
    p.add_argument("--lr", dest="learning_rate", type=float, help="fine-tuning learning rate (default 3e-4)")
    p.add_argument("--scales", dest="multiscale_rates", type=float, nargs="+", metavar="RATE",
                   help="multi-scale training rates (default 0.75 1 1.25)")
    p.add_argument("--iterations-per-epoch", type=int, help="cap on iterations per epoch (smoke runs)")
    p.add_argument("--seed", type=int, help="group order and training seed (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: GPU when present)")
    p.add_argument("--num-workers", type=int, default=4, help="data loader workers (default 4)")
    p.add_argument("--max-groups", type=int, default=None, help="stop after this many more groups")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --work-dir (settings not given are taken from it)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_semi_propagate)
