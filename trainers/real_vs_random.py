"""Real vs 100 % random labels: the coherence of fixed training / test samples while fitting each
(2203.10036 Fig. 3; 2008.01217); each arm a Keras `fit` run (`fit_arm.py`) whose monitor measures
it at step 0, every `coherence.monitor_every_steps` batches and every epoch. Rules: `RULES`."""

from cgh_tf.statistics import PairedRule

from . import figures as fig
from . import fit_arm
from .experiment import Arm
from .fit_arm import Reading, with_fields

SMALL = {"num_epochs": 20}   # the small scale's change to configs/real_vs_random.py
ARMS = {"real": (0.0, "real labels"), "random": (1.0, "random labels")}
TRAIN_R, TEST_R = "coherence/train/m_coherence", "coherence/test/m_coherence"
TRAIN_PW, TEST_PW = "coherence/train/pairwise_coherence", "coherence/test/pairwise_coherence"

READINGS = (
    Reading("coh_train_first", "m-coh. train sample (step 0)", ("step_history", TRAIN_R, "first"),
            ".2f"),
    Reading("coh_train_early", "m-coh. train (after one monitor interval)",
            ("step_at", TRAIN_R, "every"), ".2f"),
    Reading("coh_train_max", "m-coh. train (max over measured steps)",
            ("step_history", TRAIN_R, "max"), ".2f"),
    Reading("coh_train_argmax", "step of that max", ("step_of_max", TRAIN_R), ".0f"),
    Reading("coh_train_last", "m-coh. train (last)", ("history", TRAIN_R, "last"), ".2f"),
    Reading("coh_test_last", "m-coh. test sample (last)", ("history", TEST_R, "last"), ".2f"),
    Reading("pw_train_first", "pairwise coh. train (step 0)", ("step_history", TRAIN_PW, "first"),
            ".4f"),
    Reading("pw_train_early", "pairwise coh. train (after one monitor interval)",
            ("step_at", TRAIN_PW, "every"), ".4f"),
    Reading("pw_train_max", "pairwise coh. train (max over measured steps)",
            ("step_history", TRAIN_PW, "max"), ".4f"),
    Reading("pw_train_last", "pairwise coh. train (last)", ("history", TRAIN_PW, "last"), ".4f"),
    Reading("pw_test_last", "pairwise coh. test (last)", ("history", TEST_PW, "last"), ".4f"),
    Reading("train_loss", "train loss (last)", ("history", "loss", "last")),
    Reading("train_acc", "train acc vs training label (last)", ("history", "accuracy", "last")),
    Reading("test", "test acc", ("final", "test_accuracy")),
)
COMPARED = ("pw_train_first", "pw_train_early", "pw_train_max", "pw_train_last", "pw_test_last")
RULES = (PairedRule("real_more_coherent_early", "pw_train_early", "real", "random",
                    prediction="higher"),
         PairedRule("real_more_coherent_at_peak", "pw_train_max", "real", "random",
                    prediction="higher"),
         PairedRule("real_more_coherent_at_end", "pw_train_last", "real", "random",
                    prediction="higher"))


def arms(scale="small", seeds=3, overrides=None):
    """`real` and `random` over `fit_arm.base_config("real_vs_random", scale, SMALL, overrides)`."""
    base = fit_arm.base_config("real_vs_random", scale, SMALL, overrides)
    if not base.coherence.monitor_samples:
        raise ValueError("real_vs_random needs coherence.monitor_samples > 0 (the sample size m)")
    return [Arm(group, label, "", seed, with_fields(base, label_noise=noise, seed=seed))
            for group, (noise, label) in ARMS.items() for seed in range(seeds)]


def setting(runs):
    c = runs[0][1]["config"]
    return [f"Setting: {fit_arm.describe(c)}, plain SGD; monitor samples of m = "
            f"{c['coherence']['monitor_samples']} training / test examples, measured at step 0, "
            f"every {c['coherence']['monitor_every_steps']} batches and every epoch end.", ""]


def figures(workdir, runs):
    """coherence_vs_step.png, coherence_vs_epoch.png and coherence_per_layer.png (train sample)."""
    keys = ((TRAIN_PW, "pairwise coherence, train sample"),
            (TEST_PW, "pairwise coherence, test sample"),
            (TRAIN_R, "m-coherence r, train sample"),
            ("accuracy", "train acc. (running, training label)"))
    files = []
    if all(r["step_curves"].get("step") for _, r in runs):
        files.append(fig.curves_per_group(workdir, "coherence_vs_step.png", runs, keys, x="step",
                                          x_label="step (batches seen)", title="Coherence "
                                          "during training (2203.10036 Fig. 3)",
                                          series="step_curves"))
        layers = sorted(k for k in runs[0][1]["step_curves"]
                        if k.startswith("coherence/train/") and k.count("/") == 3
                        and k.endswith("/m_coherence"))
        files.append(fig.curves_per_group(
            workdir, "coherence_per_layer.png", runs,
            [(k, f"m-coh. {k.split('/')[2]}") for k in layers], x="step",
            x_label="step (batches seen)", title="m-coherence per layer, train sample",
            series="step_curves"))
    files.append(fig.curves_per_group(workdir, "coherence_vs_epoch.png", runs, keys, x="epoch",
                                      x_label="epoch", title="Coherence after every epoch"))
    return files


EXPERIMENT = fit_arm.experiment(
    READINGS, name="real_vs_random", title="Real vs random labels: coherence of fixed samples",
    default_seeds=5,
    arms=arms, comparisons=(("real", "random"),), compared=COMPARED, rules=RULES,
    figures=figures, setting=setting, progress=("pw_train_early", "pw_train_last", "test"))
