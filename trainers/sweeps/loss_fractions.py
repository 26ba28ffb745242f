"""Pristine / corrupt shares f^p, f^c of the loss reduction during training (2002.10657)."""

from trainers.sweep import Arm, Figure, Metric, Sweep, noise_group, with_fields


def loss_fractions(base, seeds, noise_levels=(0.25, 0.5), monitor_samples=256,
                   monitor_every_steps=21) -> Sweep:
    """Experiment 4: pristine / corrupt shares f^p, f^c of the loss reduction, during training.

    f^p, f^c are measured on the fixed training sample of the coherence monitor (m =
    `monitor_samples` examples, mixed pristine / corrupted as the training set) before training,
    every `monitor_every_steps` batches and at every epoch end (0: epoch ends only).
    """
    every = int(monitor_every_steps)
    arms = []
    for noise in noise_levels:
        for seed in seeds:
            config = with_fields(base, label_noise=noise, seed=seed,
                           coherence__monitor_samples=monitor_samples,
                           coherence__monitor_every_steps=every)
            arms.append(Arm(f"{noise_group(noise)}/sgd", f"SGD, {noise:.0%} noise", "", seed,
                            config))
    series = "step_history" if every else "history"
    metrics = (
        Metric("fp_first", "f^p (first measurement" + (", step 0)" if every else ", epoch 1)"),
               (series, "f_pristine", "first")),
    ) + ((Metric("fp_early", f"f^p (after {every} steps)", ("step_at", "f_pristine", every)),)
         if every else ()) + (
        Metric("fp_min", "f^p (min over measurements)", (series, "f_pristine", "min")),
        Metric("fp_null_first", "Q_p/Q, f^p's gradient-blind null (first measurement)",
               (series, "f_pristine_null", "first")),
        Metric("fp_last", "f^p (last)", ("history", "f_pristine", "last")),
        Metric("corrupted", "corrupted train acc (vs noisy label)",
               ("final", "corrupted_train_accuracy")),
        Metric("test", "test acc", ("final", "test_accuracy")),
    )
    figures = (Figure("loss_fractions.png", "Loss-reduction fractions (2002.10657)",
                      (("f_pristine", "f^p (pristine share of the loss reduction)"),
                       ("f_pristine_null", "Q_p/Q (f^p's null: orthogonal gradients)"),
                       ("coherence/pristine/m_coherence", "m-coherence, pristine sample"),
                       ("coherence/corrupted/m_coherence", "m-coherence, corrupted sample"),
                       ("corrupted_accuracy", "corrupted train accuracy (vs noisy label)"))),)
    if every:
        figures = (Figure("loss_fractions_vs_step.png",
                          f"Loss-reduction fractions every {every} steps (2002.10657)",
                          (("f_pristine", "f^p (pristine share of the loss reduction)"),
                           ("coherence/pristine/m_coherence", "m-coherence, pristine sample"),
                           ("coherence/corrupted/m_coherence", "m-coherence, corrupted sample"),
                           ("loss", "training loss (running mean of the epoch so far)")),
                          x="step", x_label="step (batches seen)", series="step_history"),
                   ) + figures
    description = (
        f"f^p = ⟨g, g^p⟩ / ⟨g, g⟩ and f^c = 1 − f^p, with g^p / g^c the summed gradients of the "
        f"pristine / corrupted examples of a fixed training sample of m = {monitor_samples} "
        f"(g = g^p + g^c), "
        + (f"before training, every {every} steps and after every epoch" if every
           else "after every epoch")
        + f"; plus the m-coherence of fixed pristine and corrupted "
        f"samples (m = {monitor_samples} each). The gradient-blind null of f^p is Q_p/Q "
        f"(`f_pristine_null`, the pristine share of Σ_i ‖g_i‖²; f^p = Q_p/Q exactly for orthogonal "
        f"gradients), not 1 − p: uniform noise over C classes changes only (1 − 1/C)·p of the "
        f"labels, and corrupted examples have larger gradients (cgh_tf/nulls.py).")
    return Sweep("loss_fractions", "Pristine vs corrupt loss-reduction fractions",
                      description, tuple(arms), metrics, figures)
