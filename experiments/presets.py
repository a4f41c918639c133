"""`--preset`: the papers' settings (`paper`) or the project's own choices (`project`).

`paper` sets what a paper states and nothing else; where the paper is silent the experiment's
own value stays, and the report names it. `project` keeps the project's choices (FDN's loss
weights 0.1 / 0.01, L_orth / B², L_aux as the mean over the heads; MTN's alpha floor and three
alphas) as named options. `paper` is the default at `--scale full`, `project` at `quick`.
"""

from __future__ import annotations

import dataclasses

PAPER, PROJECT = "paper", "project"
PRESETS = (PAPER, PROJECT)

# The FDN paper: "2 DCPs for each task" (Ali-CCP; the synthetic data's "8 experts (FDN has 4 pairs
# of DCPs)" is 2 per task too) and L = L_task + L_orth + L_aux, L_aux summed over the heads,
# L_orth the unnormalised sum of squared cross-products.
FDN_PAPER = {"pairs": 2, "aux_weight": 1.0, "orth_weight": 1.0, "aux_reduction": "sum", "orth_normalized": False}
FDN_SILENT = "batch size, learning rate and epochs where the experiment's text says so"

# The MTN paper (on MTReclib's models): all 7 mode subsets with a free alpha, lambda chosen on
# validation from {1e-6, 1e-5, 1e-4}, 20% of the training data for validation, conversion trained on
# its label over all impressions (MTReclib's loss: the `impressions` convention; ESMM's own loss is
# that already), early stopping with patience 3 on validation CVR AUC evaluated once an epoch (its
# CVR is conversion over all impressions: our CTCVR AUC); at the full scale also MTReclib's sizes
# (embedding 128, bottom / experts (512, 256), towers (128, 64)) and 10 runs averaged. The quick
# scale keeps its own sizes and runs 2 seeds: at MTReclib's sizes one MMoE cell alone trains for
# minutes here, choosing lambda trains every MTN arm three times, and CVR AUC once an epoch with
# patience 3 trains each run at least 4 epochs (about 30 s a cell at the quick sizes).
MTN_PAPER = {
    "subsets": "all",
    "alpha_floor": 0.0,
    "lams": (1e-6, 1e-5, 1e-4),
    "patience": 3,
    "monitor": "ctcvr_auc",
    "evals_per_epoch": 1,
    "conversion_loss": "impressions",
}
MTN_PAPER_FULL = {"embedding_dim": 128, "expert_units": (512, 256), "tower_units": (128, 64), "seeds": 10}
MTN_PAPER_QUICK_SEEDS = 2


def default_preset(scale: str) -> str:
    return PAPER if scale == "full" else PROJECT


def fdn_paper(settings, scale: str = "full"):
    return dataclasses.replace(settings, preset=PAPER, **FDN_PAPER)


def mtn_paper(settings, scale: str = "full"):
    data = dataclasses.replace(settings.data, eval_fraction=0.2)
    at_scale = MTN_PAPER_FULL if scale == "full" else {"seeds": MTN_PAPER_QUICK_SEEDS}
    return dataclasses.replace(settings, preset=PAPER, data=data, **MTN_PAPER, **at_scale)


def at_quick_scale(paper_preset, **changes):
    """`paper_preset` with `changes` applied at the quick scale only: an experiment's own choices to
    finish in 15 minutes (the reports' settings tables show them). A callable value maps the
    field's current value to the new one."""

    def preset(settings, scale: str = "full"):
        settings = paper_preset(settings, scale)
        if scale == "full":
            return settings
        return dataclasses.replace(
            settings,
            **{key: value(getattr(settings, key)) if callable(value) else value for key, value in changes.items()},
        )

    return preset


def describe(settings) -> str:
    """One paragraph for a report: which preset ran, and what it set."""
    if settings.preset != PAPER:
        return (
            "Preset `project`: the project's own choices, named in the settings below (not the papers' where "
            "they differ); `--preset paper` runs the papers' settings."
        )
    if not hasattr(settings, "pairs"):  # the MTN experiments' settings (`experiments.ranking`)
        return (
            "Preset `paper`: the MTN paper's settings as it states them: all 7 mode subsets with a free alpha "
            "(floor 0), lambda chosen on validation from {1e-6, 1e-5, 1e-4}, 20% of the training file for "
            "validation, conversion trained on its label over all impressions (MTReclib's loss; ESMM keeps its own, "
            "which is that already), patience 3 on the validation AUC of that conversion evaluated once an epoch; "
            "at the full scale MTReclib's sizes (embedding 128, experts and bottom [512, 256], towers [128, 64]) and "
            f"10 seeds, where the quick scale keeps its own sizes and runs {MTN_PAPER_QUICK_SEEDS} seeds to finish in "
            "15 minutes. The paper's CVR AUC (conversion over all impressions) is the CTCVR AUC column here; the CVR "
            "AUC column (clicked rows) is CTCVR / CTR for MMoE and Shared-bottom."
        )
    return (
        "Preset `paper`: the FDN paper's settings as it states them: 2 decomposition pairs per task, "
        "L = L_task + L_orth + L_aux with unit weights, L_aux summed over the auxiliary heads, L_orth the "
        "unnormalised sum of squared cross-products. Where the paper is silent the values below are ours "
        f"({FDN_SILENT})."
    )
