"""`msa2net <command>`: parses arguments and calls the plain functions of :mod:`msa2net.engine`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) == 1:
        parts = parts * 2
    try:
        h, w = (int(p) for p in parts)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from exc
    return h, w


def cmd_info(args: argparse.Namespace) -> int:
    from .engine.info import format_info, model_info
    from .models import list_models

    if args.target is None:
        for name, desc in list_models().items():
            print(f"{name:20s} {desc}")
        return 0
    info = model_info(args.target, img_size=args.img_size, num_classes=args.num_classes)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="msa2net", description="MSA2Net medical image segmentation")
    parser.add_argument("--version", action="version", version=f"msa2net {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameters, GFLOPs and settings of a model name or checkpoint")
    p.add_argument("target", nargs="?", help="registered model name (omit to list them) or checkpoint path")
    p.add_argument("--img-size", type=_size, default=None, help="input size for the FLOP count, N or HxW")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"msa2net {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
