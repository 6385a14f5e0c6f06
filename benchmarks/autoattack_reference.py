"""The standard AutoAttack here against the reference implementation, on the same models and examples.

For each digits CNN (``--models``: bit widths as a study names them; each trained ``--epochs``
epochs as a trial trains it) and each eps, this runs on the first ``--samples`` examples of the
trials' seeded stratified attack order

  1. the reference: fra31/auto-attack as ``pyautoattack`` 0.2.0 (PyTorch), ``version='standard'``,
     on the Keras model itself through tests/reference_autoattack.py's bridge (TensorFlow forward
     and input gradients, the reference's attack code);
  2. robustgrid's ``trainables.autoattack.standard_autoattack`` (TensorFlow),

and prints per model and eps: the robust accuracy of each, their difference (ours - reference),
the per-example agreement (share of examples on which both say robust, or both broken), the 2x2
table and the seconds each took.  ``--parts`` runs the named parts alone as well (the standard
settings, each part on the clean-correct examples).  The last line reads
``max |difference|: X`` (the issue's bar: 0.01, one point, on 100 examples).

Needs torch and pyautoattack (tests/oracle-requirements.txt; a development-only install).

    python benchmarks/autoattack_reference.py [--models float 4] [--eps 0.1] [--norm inf]
        [--samples 100] [--epochs 3] [--seed 0] [--parts apgd-ce apgd-t fab-t square]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.reference_autoattack (the oracle lives beside the tests)

import trainables  # noqa: E402, F401
from tests.reference_autoattack import (  # noqa: E402
    attack_subset,
    compare,
    digits_model,
    load_reference,
)
from trainables.trial import set_threads  # noqa: E402

PARTS = ("apgd-ce", "apgd-t", "fab-t", "square")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["float", "4"], help="digits CNN bit widths")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.1])
    ap.add_argument("--norm", choices=["inf", "2"], default="inf")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", nargs="*", choices=PARTS, default=[], help="also each alone")
    args = ap.parse_args()
    set_threads(2)
    torch, pyautoattack = load_reference()  # fail early, saying what is missing
    print(f"reference: pyautoattack {pyautoattack.__version__}, torch {torch.__version__}")

    worst = 0.0
    for bits in args.models:
        model, x, y = digits_model(bits, epochs=args.epochs, seed=args.seed)
        xs, ys = attack_subset(x, y, args.samples, seed=args.seed)
        for eps in args.eps:
            for parts in [None, *((p,) for p in args.parts)]:
                c = compare(model, xs, ys, eps=eps, norm=args.norm, seed=args.seed, parts=parts)
                print(f"{bits} digits CNN, {args.norm}-norm eps {eps}: {c.describe()}", flush=True)
                worst = max(worst, abs(c.difference))
    print(f"max |difference|: {worst:.3f}")


if __name__ == "__main__":
    main()
