"""Attack strength: PGD-10 from the clean example against PGD-10 with random restarts and AutoAttack.

Robust accuracy is an upper bound that only a strong attack makes tight.  For
every complete trial of a results folder (with artifacts: ``grid run`` keeps
them by default), this reloads the trial's model (``model.h5``) and its test
split, and attacks the same stratified, seeded subset of test examples with

  1. PGD-10, no random start (robustgrid's attack before issue 13),
  2. PGD-10 with ``--restarts`` random starts (robust only if it survives all),
  3. the standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square on logits: trainables.autoattack),

all through ``trainables.attacks.evaluate_attacks``, the trials' own path.
It prints, per trial and eps, the three robust accuracies and how far the
stronger attacks lower PGD-10's figure (in points and as a ratio), then the
mean over trials and the largest drop.

    python benchmarks/attack_strength.py results/digits-default [--eps 0.05 0.1] [--samples 200] [--restarts 5]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from trainables.artifacts import MANIFEST_FILE, load_model
from trainables.attacks import evaluate_attacks
from trainables.config import AttackName, AttackSpec, TrialConfig
from trainables.data import trial_split
from trainables.trial import set_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", help="a study's results folder (holding artifacts/)")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument(
        "--no-autoattack",
        action="store_true",
        help="PGD only (AutoAttack is the slow one; the study's own autoattack rows attack the same prefix)",
    )
    args = ap.parse_args()
    set_threads(2)

    eps = tuple(args.eps)
    specs = (
        AttackSpec(name=AttackName.pgd, eps=eps, steps=args.steps, samples=args.samples),
        AttackSpec(
            name=AttackName.pgd,
            eps=eps,
            steps=args.steps,
            restarts=args.restarts,
            samples=args.samples,
        ),
        AttackSpec(name=AttackName.autoattack, eps=eps, samples=args.samples),
    )[: 2 if args.no_autoattack else 3]
    labels = (f"PGD-{args.steps}", f"PGD-{args.steps}x{args.restarts}", "AutoAttack")[: len(specs)]
    folders = sorted(
        p for p in (Path(args.results) / "artifacts").iterdir() if (p / MANIFEST_FILE).is_file()
    )
    if not folders:
        raise SystemExit(f"{args.results}: no trial artifacts (run the study with artifacts: true)")
    print(f"{len(folders)} trials, {args.samples} stratified test examples (seed 0), L-inf")
    print(f"{'key':16}  {'bits':>8} {'spars':>5} {'clus':>4} {'jr':>5}  {'eps':>5}  "
          + "  ".join(f"{lb:>11}" for lb in labels) + "   drop(AA)")  # fmt: skip
    table: dict[float, list[tuple[float, ...]]] = {e: [] for e in eps}
    for folder in folders:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        config = {k: v for k, v in manifest["config"].items() if k != "revision"}
        cfg = TrialConfig.model_validate(config)
        split = trial_split(cfg)
        model = load_model(folder)
        results = [
            evaluate_attacks(
                model,
                split.x_test,
                split.y_test,
                split.num_classes,
                (spec,),
                test_index=split.test_index,
            )
            for spec in specs
        ]
        for i, e in enumerate(eps):
            accs = tuple(r[i].robust_acc for r in results)
            table[e].append(accs)
            assert len({r[i].subset_hash for r in results}) == 1  # the same examples for all
            print(
                f"{folder.name:16}  {cfg.bits:>8} {cfg.sparsity:>5g} {cfg.clusters:>4} {cfg.jr_weight:>5g}  {e:>5g}  "
                + "  ".join(f"{a:>11.3f}" for a in accs)
                + f"   {accs[0] - accs[-1]:+.3f}"
            )  # fmt: skip
    print()
    for e in eps:
        a = np.array(table[e])  # (trials, attacks)
        means = a.mean(axis=0)
        drop = a[:, 0] - a[:, -1]
        print(
            f"eps {e:g}: mean robust acc " + ", ".join(f"{lb} {m:.3f}" for lb, m in zip(labels, means, strict=True))
            + "; " + ", ".join(f"{lb} / {labels[0]} = {m / max(means[0], 1e-12):.3f}" for lb, m in zip(labels[1:], means[1:], strict=True))
            + f"; largest drop ({labels[-1]}) {drop.max():.3f}, lower in {int((drop > 0).sum())}/{len(drop)} trials"
        )  # fmt: skip


if __name__ == "__main__":
    main()
