"""Arguments shared by several subcommands: which model runs, at what size, on which device, and
for which classes."""

from __future__ import annotations

import argparse


def add_model_arguments(p: argparse.ArgumentParser, device: bool = True) -> None:
    """--weights, --image-size and (``device``) --device: which model runs, at what size, where."""
    p.add_argument("--weights", help="trained Inf-Net state dict or an authors' checkpoint (default: the shipped model)")
    p.add_argument("--image-size", type=int, default=None, metavar="S",
                   help="in-plane network input size in px, multiple of 32 (default: the size the model was trained "
                        "at, from its bundle's metadata.json, else the shipped model's; 352 for the authors' weights)")
    if device:
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: GPU when present)")


def add_class_arguments(p: argparse.ArgumentParser, patterns_output: str) -> None:
    """--classes and --pattern-weights: infection (0/1) or infection patterns (GGO/consolidation)."""
    p.add_argument("--classes", choices=["infection", "patterns"], default="infection",
                   help=f"infection (default): the Inf-Net's infection map; patterns: {patterns_output}")
    p.add_argument("--pattern-weights", metavar="MODEL.pt",
                   help="multi-class UNet for --classes patterns (default: the shipped models/multiclass_model.pt)")
