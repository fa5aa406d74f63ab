"""`m2f data check -e spec.yaml` and `m2f data synth --type ... --num-images N --out DIR`."""

from __future__ import annotations

import argparse
import re
import sys

from m2f_trainer.errors import UserError

USAGE = "usage: m2f data {check,synth} ...  (check -e spec.yaml [overrides]; synth --type T --num-images N --out DIR)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line through the CLI's UserError handling, no usage dump
        raise UserError(f"{self.prog}: {message}")


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)(?:x(\d+))?", text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not HxW (e.g. 128x160) or a single side")
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def _synth(argv: list[str]) -> int:
    from m2f_trainer.data.synth import KINDS, synthesize

    parser = _Parser(prog="m2f data synth", description="write a deterministic synthetic dataset + spec")
    parser.add_argument("--type", required=True, choices=KINDS, dest="kind")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=_size, default=(128, 128), help="HxW of every image (default 128x128)")
    ns = parser.parse_args(argv)
    if ns.num_images < 1:
        raise UserError(f"m2f data synth: --num-images must be >= 1, got {ns.num_images}")
    if min(ns.size) < 16:
        raise UserError(f"m2f data synth: --size must be at least 16x16, got {ns.size[0]}x{ns.size[1]}")
    spec = synthesize(ns.kind, ns.out, ns.num_images, ns.seed, ns.size)
    print(f"wrote {ns.num_images} {ns.kind} images to {spec.parent}; spec: {spec}")
    return 0


def _check(argv: list[str]) -> int:
    from m2f_spec import parse_task_args
    from m2f_trainer.data.check import check

    cfg, _ = parse_task_args(argv, "m2f data check")
    reports, label_map = check(cfg)
    print(f"label map: {len(label_map)} categories, {label_map.num_classes} classes "
          f"(contiguous_id={label_map.contiguous_id}, from {label_map.source})")
    for report in reports:
        print("\n".join(report.lines(label_map)))
    problems = sum(len(r.problems) for r in reports)
    images = sum(r.images for r in reports)
    print(f"data check: {len(reports)} splits, {images} images, {problems} problems")
    return 2 if problems else 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "check":
        return _check(rest)
    if command == "synth":
        return _synth(rest)
    print(f"m2f data: unknown subcommand {command!r}; choose check or synth", file=sys.stderr)
    return 2
