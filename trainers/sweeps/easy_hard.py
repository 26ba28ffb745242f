"""Easy / hard examples, defined by a short probe run and trained on separately (2003.07422)."""

from trainers.sweep import Arm, Figure, Metric, Sweep, with_fields


def easy_hard(base, seeds) -> Sweep:
    """Experiment 3: easy / hard examples (defined by a short probe run), trained on separately.

    One arm per seed runs `mode="easy_hard"` (`trainers.train.train_easy_hard`): probe, split,
    then a run on each part in the arm's `probe/`, `easy/`, `hard/` sub-workdirs.
    """
    arms = tuple(Arm("easy_hard", "easy / hard", "", seed, with_fields(base, label_noise=0.0, seed=seed))
                 for seed in seeds)
    metrics = (
        Metric("num_easy", "easy examples", ("dataset", "num_easy"), ".0f"),
        Metric("num_hard", "hard examples", ("dataset", "num_hard"), ".0f"),
        Metric("easy_test", "easy: test acc (own held-out part)",
               ("final", "easy_test_accuracy")),
        Metric("hard_test", "hard: test acc (own held-out part)",
               ("final", "hard_test_accuracy")),
        Metric("easy_train", "easy: train acc (last)", ("history", "easy/accuracy", "last")),
        Metric("hard_train", "hard: train acc (last)", ("history", "hard/accuracy", "last")),
    )
    figures = (Figure("easy_hard.png", "Easy vs hard examples (2003.07422)",
                      (("easy/accuracy", "easy part: train accuracy (running)"),
                       ("easy/val_accuracy", "easy part: test accuracy"),
                       ("hard/accuracy", "hard part: train accuracy (running)"),
                       ("hard/val_accuracy", "hard part: test accuracy")), ylim=(0.0, 1.0)),)
    description = (
        f"A probe run of {base.easy_hard.probe_epochs} epochs labels every training example easy "
        f"(classified correctly at its end) or hard; each part is split "
        f"{1 - base.easy_hard.test_fraction:.0%} / {base.easy_hard.test_fraction:.0%} into its own "
        f"train / test, and a fresh model is trained on each part and tested on that part's own "
        f"held-out examples. Clean labels.")
    return Sweep("easy_hard", "Easy vs hard examples", description, arms, metrics, figures,
                      sub_runs=("probe", "easy", "hard"))
