"""Fast exact per-layer rules: one forward and one backward pass give every example's squared
gradient norm, materialising a layer's per-example gradients only where that is the cheaper exact
form (`materialised.py` for Dense / EinsumDense over positions, `conv.py`). Interface: `base.py`.

| rule | layers (Keras' own `call`, not overridden) | module |
|---|---|---|
| dense | Dense | dense.py |
| embedding | Embedding | embedding.py |
| layer_norm | LayerNormalization | normalization.py |
| group_norm, batch_norm, rms_norm | GroupNormalization, BatchNormalization (no renorm), RMSNormalization | normalization.py |
| einsum_dense | EinsumDense (any equation Keras accepts; so MultiHeadAttention, GroupedQueryAttention) | einsum_dense.py |
| lora | Dense, EinsumDense with `enable_lora` (not quantized) | lora.py |
| conv, depthwise_conv, separable_conv, conv_transpose | Conv1D/2D/3D (groups, causal), DepthwiseConv1D/2D, SeparableConv1D/2D, Conv1D/2D/3DTranspose | conv.py |
| recurrent | SimpleRNN, LSTM, GRU (reset_after) with Keras' own cell, no dropout, not stateful (so Bidirectional of them) | recurrent.py |

A layer without a rule, or whose variables are also used outside it (tied weights), goes to the
exact fallback (`cgh_tf.exact_fallback`); `cgh_tf.per_example.explain(model)` lists the choice.
"""

from cgh_tf.layer_rules.base import CallContext, Factors, LayerCall, LayerRule, Statistic  # noqa: F401
from cgh_tf.layer_rules.conv import ConvRule, ConvTransposeRule, DepthwiseConvRule, SeparableConvRule
from cgh_tf.layer_rules.dense import DenseRule
from cgh_tf.layer_rules.einsum_dense import EinsumDenseRule
from cgh_tf.layer_rules.embedding import EmbeddingRule
from cgh_tf.layer_rules.lora import LoraRule
from cgh_tf.layer_rules.normalization import BatchNormRule, GroupNormRule, LayerNormRule, RMSNormRule
from cgh_tf.layer_rules.recurrent import RecurrentRule

RULES = (DenseRule, EmbeddingRule, LayerNormRule, EinsumDenseRule, GroupNormRule, BatchNormRule, RMSNormRule,
         LoraRule, ConvRule, DepthwiseConvRule, SeparableConvRule, ConvTransposeRule, RecurrentRule)


def rule_for(layer):
    """The first rule of `RULES` that matches `layer`, or None."""
    for rule in RULES:
        if rule.matches(layer):
            return rule
    return None
