"""The two papers' comparisons, computed from a results folder (``grid compare RESULTS``).

Definitions first:

- **cell**: one (attack, norm, eps) the results hold, e.g. ``pgd@0.031``; its
  **kind** is the attack's: ``white`` (gradients of the attacked model),
  ``black`` (predictions only) or ``transfer`` (crafted on a float surrogate),
  from the rows' ``attack_kind`` (from the attack's name for rows without it);
  ``worst`` for the trials' worst rows (attack ``worst``: per example, robust
  only if robust under every attack of the cell's norm and eps, over the
  examples all of them attacked), a kind of its own, so the gain and the
  second paper's tests are also given on the per-example worst case.
- **fold mean**: a variant's robust accuracy in a cell, averaged over its
  complete trials there (its folds); **sd** their sample standard deviation
  (NaN for one fold); **n** how many trials.
- **variant** (first paper): what the first paper varies, per dataset: the
  model, ``bits`` (with any per-layer bits), per-layer JR (on/off and its
  weights), input-output JR's weight, adversarial training (method and eps),
  and pruning / clustering where present.  Its readable label, e.g.
  ``resnet8 float``, ``stq_cnn stochastic_ternary +JR(all=0.01)``,
  ``digits_cnn 4 +ioJR(0.1) +adv(pgd 0.03)`` (:func:`variant_label`).  Every
  other setting (epochs, seed, ...) is pooled; a variant that spans several
  configs gets a warning (filter with ``where=``).
- **reference model** of a dataset (``REFERENCE_MODELS``): MLPerf Tiny's
  ResNet-8 on images (``cifar10``, ``svhn``), DS-CNN on keyword spotting
  (``speech_commands``), and the stand-in ``digits_cnn`` on the embedded digits.
- **relative gain of A over B** for one kind: over the cells of that kind in
  which both A and B have complete trials, with a and b their fold means,
  ``gain = mean over cells with b > 0 of (a - b) / b`` (a fraction: 0.083 is
  the paper's "8.3% higher"); cells with b = 0 have no ratio and are counted
  in ``skipped``; ``abs_diff = mean over all shared cells of (a - b)`` (an
  accuracy difference; x 100 for points).  Defaults: B is the dataset's
  reference model in float without defences (no JR of either kind, no
  adversarial training, no pruning, clustering or per-layer bits); A is the
  ``stochastic_ternary`` variant with per-layer JR and no adversarial
  training, preferring a model other than the reference (the first by label
  when several qualify; the others are named in ``notes``).

Second paper (:func:`paper2`), per cell and adversarial-training method:
each reduction (quantization, pruning, clustering) alone and every
combination, with its fold mean and sd, its paired difference against the
uncompressed config of the same training (``analysis.effects.reduction_effects``:
corrected resampled t, exact McNemar, Holm over the cell's configs), and, for
a combination, the paired difference against its **worst single reduction**:
of the configs that apply exactly one of the combination's reductions at the
combination's setting (same bits, or sparsity, or clusters; everything else
identical), the one with the lowest fold mean over the folds both have.  That
difference is tested fold by fold the same way (corrected t, exact McNemar on
the per-example masks summed over folds; Holm over the cell's combinations).
``verdict``: ``worse`` / ``better`` when the Holm-adjusted corrected-t p is
below ``alpha`` (0.05) with that sign, ``no significant difference``
otherwise, ``untested: <why>`` when no test can be made (a single fold, a
missing single reduction).  Choosing the lowest single makes "worse" the
harder claim, never the easier one.

Reads the DuckDB views of :func:`analysis.query.connect`: rows of stale
results revisions are already left out.  Accuracies are fractions.

The code is split by concern: ``analysis.variants`` (kinds, cells, labels),
``analysis.paper1``, ``analysis.paper2`` and ``analysis.tables`` (terminal, CSV
and LaTeX writers); this module keeps their public names in one place.
"""

from __future__ import annotations

from analysis.paper1 import Paper1, check_where, paper1
from analysis.paper2 import PAPER2_COLUMNS, paper2
from analysis.tables import (
    format_gain,
    format_paper1,
    format_paper2,
    latex_table,
    paper1_gain_table,
    paper1_wide,
    write_csvs,
    write_latex,
)
from analysis.variants import (
    ALPHA,
    DEFAULT_A_BITS,
    KIND_NAMES,
    KINDS,
    REFERENCE_MODELS,
    CompareError,
    cell_label,
    match_label,
    variant_label,
)

__all__ = [
    "ALPHA",
    "DEFAULT_A_BITS",
    "KINDS",
    "KIND_NAMES",
    "PAPER2_COLUMNS",
    "REFERENCE_MODELS",
    "CompareError",
    "Paper1",
    "cell_label",
    "check_where",
    "format_gain",
    "format_paper1",
    "format_paper2",
    "latex_table",
    "match_label",
    "paper1",
    "paper1_gain_table",
    "paper1_wide",
    "paper2",
    "variant_label",
    "write_csvs",
    "write_latex",
]
