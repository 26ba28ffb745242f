"""Real vs 100 % random labels: m-coherence of fixed train / test samples (2203.10036 Fig. 3;
2008.01217)."""

from trainers.sweep import Arm, Figure, Metric, Sweep, sweep_values, with_fields


def real_vs_random(base, seeds, noise_levels=None) -> Sweep:
    """Experiment 1: m-coherence of fixed train / test samples, real vs 100 % random labels.

    The monitor settings (sample size m, per layer, batch coherence) are those of `base`, i.e. of
    `configs/real_vs_random.py`; noise_levels default to its sweep (0.0, 1.0).
    """
    if noise_levels is None:
        noise_levels = sweep_values("real_vs_random", "label_noise")
    m = base.coherence.monitor_samples
    if not m:
        raise ValueError("real_vs_random needs coherence.monitor_samples > 0 (the sample size m)")
    arms = []
    for noise in noise_levels:
        name = {0.0: "real", 1.0: "random"}.get(noise, f"noise{round(noise * 100):02d}")
        label = {0.0: "real labels", 1.0: "random labels"}.get(noise, f"{noise:.0%} random labels")
        for seed in seeds:
            arms.append(Arm(name, label, "", seed, with_fields(base, label_noise=noise, seed=seed)))
    every = base.coherence.monitor_every_steps
    coherence_series = "step_history" if every else "history"
    coherence_key = "coherence/train/m_coherence"
    metrics = (
        Metric("coh_train_first", "m-coh. train sample (first measurement"
               + (", step 0)" if every else ", epoch 1)"), (coherence_series, coherence_key,
                                                             "first"), ".2f"),
    ) + ((
        Metric("coh_train_early", f"m-coh. train (after {every} steps)",
               ("step_at", coherence_key, every), ".2f"),
        Metric("coh_train_max", f"m-coh. train (max over steps, every {every})",
               ("step_history", coherence_key, "max"), ".2f"),
        Metric("coh_train_argmax", "step of that max", ("step_of_max", coherence_key), ".0f"),
    ) if every else (
        Metric("coh_train_max", "m-coh. train (max)", ("history", coherence_key, "max"), ".2f"),
    )) + (
        Metric("coh_train_last", "m-coh. train (last)",
               ("history", "coherence/train/m_coherence", "last"), ".2f"),
        Metric("coh_test_last", "m-coh. test sample (last)",
               ("history", "coherence/test/m_coherence", "last"), ".2f"),
        Metric("train_loss", "train loss (last)", ("history", "loss", "last")),
        Metric("train_acc", "train acc vs training label (last)", ("history", "accuracy", "last")),
        Metric("test", "test acc", ("final", "test_accuracy")),
    )
    columns = (("coherence/train/m_coherence", f"m-coherence, train sample (m={m})"),
               ("coherence/test/m_coherence", f"m-coherence, test sample (m={m})"),
               ("accuracy", "train accuracy (running, vs training label)"))
    figures = (
        Figure("coherence_vs_epoch.png", "m-coherence during training (2203.10036 Fig. 3)",
               columns, log_y=False),
        Figure("coherence_vs_loss.png", "m-coherence against training loss", columns[:2],
               x="loss", x_label="training loss (running mean of the epoch)"),
        Figure("coherence_per_layer.png", "m-coherence per layer, train sample",
               (("coherence/train/*/m_coherence", "m-coherence"),)),
    )
    if every:
        step_columns = columns[:2] + (("accuracy", "train accuracy (running, in the epoch)"),)
        figures = (
            Figure("coherence_vs_step.png", f"m-coherence every {every} steps (2203.10036 Fig. 3)",
                   step_columns, x="step", x_label="step (batches seen)", series="step_history"),
            Figure("coherence_vs_loss.png", "m-coherence against training loss", columns[:2],
                   x="loss", x_label="training loss (running mean of the epoch so far)",
                   series="step_history"),
            Figure("coherence_per_layer.png", "m-coherence per layer, train sample",
                   (("coherence/train/*/m_coherence", "m-coherence"),), x="step",
                   x_label="step (batches seen)", series="step_history"),
            figures[0],
        )
    description = (
        f"m-coherence (‖Σ g_i‖² / Σ ‖g_i‖²: 1 = orthogonal, m = identical) of the per-example "
        f"gradients of a fixed training sample and a fixed test sample of m = {m} examples each "
        f"(inference mode, training labels for the training sample), "
        + (f"before training, every {every} steps (batches) and after every epoch" if every
           else "after every epoch")
        + ", for real labels and for 100 % random labels (uniform over all classes, so ~10 % "
        "stay correct). Same m for both arms.")
    groups = list(dict.fromkeys(a.group for a in arms))
    return Sweep("real_vs_random", "Real vs random labels: m-coherence", description,
                 tuple(arms), metrics, figures,
                 comparisons=tuple(("real", g) for g in groups if g != "real" and "real" in groups))
