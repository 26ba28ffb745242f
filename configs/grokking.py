"""Grokking on modular arithmetic (`python -m trainers.reproduce --experiment=grokking`).

Base config of every arm of `trainers/grokking.py`; the arms change the fields listed in
`trainers.grokking.ARMS`. Literature settings: Power et al. 2022 (arXiv 2201.02177): AdamW,
lr 1e-3, weight decay 1, β2 0.98, batch 512, 30-50 % train; Nanda et al. 2023 (arXiv 2301.05217):
1-layer transformer, p = 113, 30 % train, full batch, wd 1, lr 1e-3; Liu et al. 2022 "Omnigrok"
(arXiv 2210.01117): MLPs on one-hot operands grok, faster with weight decay.

Scales (`SCALES`): `small` (default, ≤ 15 minutes for 2 seeds here: MLP p = 97, 50 % train, lr
5e-3 and 3,000 updates — measured: at lr 3e-3 the MLP grokked at ≈ 2,900 of 4,000 updates, at
5e-3 at ≈ 1,800; transformer width 64 at lr 3e-3, 50 % train, 1,500 updates) and `full` (p = 113, 30 % train, lr 1e-3 as Nanda / Power, 20k updates,
transformer width 128). The winsorized-GD arm and its control use batch 128 at every scale: with
c = 1 % that is one example clipped per side and the exact XLA clipping network of
`cgh_tf.robust` (≈ 9 ms per update here, vs ≈ 1 s per update at batch 512 on the
materialised path).
"""

import ml_collections


def get_config():
    return ml_collections.ConfigDict(dict(
        p=97,                    # modulus
        operation="add",         # add / subtract / multiply (cgh_tf.modular.OPERATIONS)
        train_fraction=0.5,      # of the p² pairs
        data_seed=0,             # train / test split of the pairs (the same for every seed)
        seed=0,                  # weights and batch order
        model="mlp",             # mlp (one-hot operands) / transformer (tokens)
        width=256,
        depth=1,                 # hidden layers (mlp) / blocks (transformer)
        heads=4,
        init_scale=1.0,
        optimizer="adamw",       # adamw / m3 / rm3 / ra3 (the last three wrap AdamW)
        aggregation="mean",      # mean / winsorize (per-example gradients, winsorized GD)
        winsorize_pct=None,      # c: percent clipped per side; aggregation="winsorize" needs it
        learning_rate=5e-3,
        weight_decay=1.0,        # decoupled (AdamW)
        beta_2=0.98,
        batch_size=512,
        steps=3000,              # optimizer updates
        log_every=100,           # updates between measurements
        print_every_logs=10,
        checkpoint_every=500,
        coherence_samples=256,   # m of the fixed train and test samples
    ))


SCALES = {
    "small": {},
    "full": {"p": 113, "train_fraction": 0.3, "learning_rate": 1e-3, "steps": 20000,
             "log_every": 200, "checkpoint_every": 1000},
}
# Per-scale changes of the transformer arms (on top of the scale's own fields).
TRANSFORMER = {
    "small": {"model": "transformer", "width": 64, "learning_rate": 3e-3, "steps": 1500,
              "log_every": 50},
    "full": {"model": "transformer", "width": 128, "steps": 20000, "log_every": 200},
}
