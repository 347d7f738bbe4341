"""The toy GPT against an independent implementation with copied weights.

Hugging Face's GPT-2 (``GPT2Model``) is the reference: pre-LayerNorm blocks, causal
softmax attention scaled by ``1/sqrt(d_head)``, learned positions, a final LayerNorm. Ours
has no biases and exact GELU, so the reference is configured with ``activation_function=
"gelu"`` and its biases set to zero; GPT-2's ``Conv1D`` stores ``W.T`` (``(d_in, d_out)``),
so each of our ``(d_out, d_in)`` weights is transposed once when copied, and GPT-2's fused
``c_attn`` is ``[W_Q; W_K; W_V]`` transposed. GPT-2 ties its LM head to ``wte``, ours is
untied, so the logits compare ``ln_final(h) @ W_U.T`` against the reference's final hidden
state times our ``W_U``. A second, dependency-free reference built on
``torch.nn.functional.scaled_dot_product_attention`` checks the same thing without
transformers. Any change to the attention scale, masking, LayerNorm placement, activation
or residual wiring of ``toymodels/model.py`` breaks these.
"""
import pytest
import torch
import torch.nn.functional as F

from toymodels.model import GPT, ModelConfig

CFG = ModelConfig(n_layers=2, d_model=16, n_heads=4, d_mlp=32, d_vocab=13, n_ctx=7)


def _trained_like(seed: int = 0) -> GPT:
    """Our GPT with every parameter (LayerNorms included) random, so no term is trivially 1 or 0."""
    gen = torch.Generator().manual_seed(seed)
    model = GPT(CFG, generator=gen)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_ln_gain = p.ndim == 1 and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.ndim == 2 else 0.3) + float(is_ln_gain))
    return model.eval()


def _tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, CFG.d_vocab, (3, CFG.n_ctx), generator=torch.Generator().manual_seed(seed))


def _sdpa_reference(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Logits written from the weights alone with PyTorch's fused attention kernel."""
    B, T = idx.shape
    H, d_head = CFG.n_heads, CFG.d_model // CFG.n_heads
    x = model.W_E.weight[idx] + model.W_pos.weight[:T]  # (B, T, d_model)
    for blk in model.blocks:
        h = F.layer_norm(x, (CFG.d_model,), blk.ln_attn.weight, blk.ln_attn.bias, blk.ln_attn.eps)
        q, k, v = (F.linear(h, W.weight).view(B, T, H, d_head).transpose(1, 2)
                   for W in (blk.attn.W_Q, blk.attn.W_K, blk.attn.W_V))  # (B, H, T, d_head)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # default scale 1/sqrt(d_head)
        x = x + F.linear(z.transpose(1, 2).reshape(B, T, CFG.d_model), blk.attn.W_O.weight)
        h = F.layer_norm(x, (CFG.d_model,), blk.ln_mlp.weight, blk.ln_mlp.bias, blk.ln_mlp.eps)
        x = x + F.linear(F.gelu(F.linear(h, blk.mlp.W_in.weight)), blk.mlp.W_out.weight)
    x = F.layer_norm(x, (CFG.d_model,), model.ln_final.weight, model.ln_final.bias, model.ln_final.eps)
    return F.linear(x, model.W_U.weight)


def test_gpt_matches_sdpa_reference_with_the_same_weights():
    model, idx = _trained_like(), _tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(idx), _sdpa_reference(model, idx), atol=1e-5, rtol=1e-5)


def _gpt2_copy(model: GPT):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=CFG.d_vocab, n_positions=CFG.n_ctx, n_embd=CFG.d_model,
                                  n_layer=CFG.n_layers, n_head=CFG.n_heads, n_inner=CFG.d_mlp,
                                  activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0, layer_norm_epsilon=model.ln_final.eps)
    ref = transformers.GPT2Model(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.zero_()  # biases stay zero: ours has none
        ref.wte.weight.copy_(model.W_E.weight)
        ref.wpe.weight.copy_(model.W_pos.weight)
        for ours, theirs in zip(model.blocks, ref.h):
            a = ours.attn
            theirs.ln_1.weight.copy_(ours.ln_attn.weight)
            theirs.ln_1.bias.copy_(ours.ln_attn.bias)
            theirs.ln_2.weight.copy_(ours.ln_mlp.weight)
            theirs.ln_2.bias.copy_(ours.ln_mlp.bias)
            # Conv1D holds W.T: (d_in, d_out); c_attn's output is [q | k | v]
            theirs.attn.c_attn.weight.copy_(torch.cat([a.W_Q.weight, a.W_K.weight, a.W_V.weight]).T)
            theirs.attn.c_proj.weight.copy_(a.W_O.weight.T)
            theirs.mlp.c_fc.weight.copy_(ours.mlp.W_in.weight.T)
            theirs.mlp.c_proj.weight.copy_(ours.mlp.W_out.weight.T)
        ref.ln_f.weight.copy_(model.ln_final.weight)
        ref.ln_f.bias.copy_(model.ln_final.bias)
    return ref


def test_gpt_matches_hugging_face_gpt2_with_copied_weights():
    model, idx = _trained_like(seed=3), _tokens(seed=4)
    ref = _gpt2_copy(model)
    with torch.no_grad():
        hidden = ref(input_ids=idx).last_hidden_state  # (B, T, d_model), after ln_f
        torch.testing.assert_close(model(idx), hidden @ model.W_U.weight.T, atol=1e-5, rtol=1e-5)
