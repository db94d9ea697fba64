"""The architecture every implementation follows. Read this before any of the three model files.

GPT (nanoGPT's design, GPT-2 style, pre-LayerNorm):

    x = wte[idx] + wpe[0:T]                      token + learned position embeddings, (B, T, C)
    x = dropout(x)
    for each of n_layer blocks:
        x = x + attn(ln_1(x))                    causal multi-head self-attention
        x = x + mlp(ln_2(x))                     Linear(C, 4C) -> GELU -> Linear(4C, C) -> dropout
    logits = ln_f(x) @ wte.T                     LM head tied to the token embedding

Attention: c_attn projects to q, k, v (in that order along the last axis, each C wide), heads split
as (B, T, n_head, C // n_head), scores scaled by 1/sqrt(head_size), causal mask, softmax, dropout on
the attention weights, heads merged back, then c_proj and residual dropout.

The choices where the frameworks' defaults differ, fixed here for all three (the GELU form and the
LayerNorm epsilon are the defaults of GPTConfig's fields of those names, which a GPT-2 folder may set):
"""

LAYER_NORM_EPS = 1e-5       # torch's default; Keras defaults to 1e-3, Flax NNX to 1e-6
GELU_APPROXIMATE = False    # exact erf GELU; jax.nn.gelu and keras.ops.gelu default to the tanh form
MLP_RATIO = 4
INIT_STD = 0.02             # weights and embeddings; the residual projections are scaled down (params.py)
LOSS_IGNORE_INDEX = -1      # targets equal to this do not count in the mean cross-entropy
