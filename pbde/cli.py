"""The ``pbde`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from pbde.demo import DemoSettings, run_demo

    settings = DemoSettings(
        beta=args.beta,
        steps=args.steps,
        pairs=args.pairs,
        seed=args.seed,
        device=args.device,
        grid_size=args.grid_size,
    )
    if args.quick:
        settings.steps, settings.pairs, settings.pretrain_steps = 60, 2**11, 200
    report = run_demo(settings, args.out, progress=not args.no_progress)
    metrics = report["metrics"]
    print(
        f"DPO (beta={settings.beta:g}) under a Luce annotator, {settings.pairs} pairs, "
        f"{settings.steps} steps, {report['seconds']:.1f} s"
    )
    print(f"  TV(theory, pi_pre)    = {metrics['tv_theory_pretrained']:.4f}   (before fitting)")
    print(f"  TV(theory, learned)   = {metrics['tv_theory_learned']:.4f}")
    print(f"  KL(theory || learned) = {metrics['kl_theory_learned']:.5f}")
    if args.out is not None:
        print(f"  wrote {args.out / 'demo.png'} and {args.out / 'demo.json'}")
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pbde", description="Learning from pairwise preferences as density estimation."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="fit DPO to a synthetic Luce annotator and compare with the theory (Fig. 3)"
    )
    demo.add_argument("--beta", type=float, default=4.0, help="DPO inverse temperature (> 0)")
    demo.add_argument("--steps", type=int, default=300, help="training steps")
    demo.add_argument("--pairs", type=int, default=2**13, help="annotator queries")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--grid-size", type=int, default=2**11, help="energy normalizer grid")
    demo.add_argument("--device", default="cpu", help="where to fit, e.g. cuda")
    demo.add_argument("--out", type=Path, default=None, help="folder for demo.png and demo.json")
    demo.add_argument("--quick", action="store_true", help="a few seconds, for smoke tests")
    demo.add_argument("--json", action="store_true", help="print the whole report as JSON")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(handler=_demo)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as error:
        print(f"pbde {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
