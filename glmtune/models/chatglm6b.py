"""ChatGLM-6B (the first generation, THUDM 2023) as a native transformers model inside glmtune.

transformers has no class for it and its remote code (`modeling_chatglm.py`, written for transformers 4.27)
does not run on transformers 5, so this module re-implements the same network, registered with the Auto classes
under `model_type: glmtune_chatglm6b` (loading never needs `trust_remote_code`):

* GLM-130B blocks: LayerNorm (with bias) -> attention -> residual `ln_out * alpha + attn_out` with
  `alpha = sqrt(2 * 28)` (the residual adds the *normalised* input: "DeepNorm"-style post-LN), then the
  same around a GeLU MLP (`dense_h_to_4h` -> tanh-GeLU -> `dense_4h_to_h`); every linear layer has a bias.
  (The original fixes alpha at sqrt(2 * 28) for any depth: its blocks never receive num_layers.)
* fused QKV laid out per head (`[head][q|k|v][head_dim]`), attention scores scaled by `1/(sqrt(d) * (layer+1))`
  and re-multiplied by `layer+1` in fp32 before the softmax (the fp16 overflow guard of the original).
* 2D rotary positions: the first half of each head is rotated by the position id, the second half by the block
  position id. For a sequence `context [gMASK] <sop> answer...`: positions count up through the context, then stay
  at the gMASK index for the answer; block positions are 0 in the context and 1, 2, ... from `<sop>`. The context
  (everything before `<sop>`) attends bidirectionally, the rest causally. The rotary table is built from an
  inverse-frequency vector rounded to fp16, as the original does.
* P-Tuning v2 as in THUDM's `ptuning/main.py`: `pre_seq_len` / `prefix_projection` in the config add
  `transformer.prefix_encoder`, whose output is prepended to every layer's keys and values.

Parameter names are the original's (`transformer.layers.N.attention.query_key_value`, ...), so a ChatGLM-6B
checkpoint converts by copying tensors (dropping the rotary buffers, dequantizing INT4/INT8 ones: see
`glmtune/models/convert_chatglm6b.py`), and LoRA targets and P-Tuning checkpoints keep their upstream names.
A sequence without `<sop>` (plain text, no prompt/answer split) is scored as ordinary causal text.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

try:  # transformers >= 4.52: the layer runs itself under gradient checkpointing
    from transformers.modeling_layers import GradientCheckpointingLayer as _LayerBase
except ImportError:  # pragma: no cover
    _LayerBase = nn.Module

MODEL_TYPE = "glmtune_chatglm6b"


class ChatGLM6BConfig(PretrainedConfig):
    """The original `ChatGLMConfig` fields (same names, same defaults as THUDM/chatglm-6b's config.json)."""

    model_type = MODEL_TYPE
    attribute_map = {"num_hidden_layers": "num_layers", "intermediate_size": "inner_hidden_size",
                     "max_position_embeddings": "max_sequence_length"}

    def __init__(self, vocab_size=130528, hidden_size=4096, num_layers=28, num_attention_heads=32,
                 layernorm_epsilon=1e-5, use_cache=True, bos_token_id=130004, eos_token_id=130005,
                 mask_token_id=130000, gmask_token_id=130001, pad_token_id=3, max_sequence_length=2048,
                 inner_hidden_size=16384, position_encoding_2d=True, pre_seq_len=None, prefix_projection=False,
                 tie_word_embeddings=True, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_attention_heads = num_attention_heads
        self.layernorm_epsilon = layernorm_epsilon
        self.use_cache = use_cache
        self.mask_token_id = mask_token_id
        self.gmask_token_id = gmask_token_id
        self.max_sequence_length = max_sequence_length
        self.inner_hidden_size = inner_hidden_size
        self.position_encoding_2d = position_encoding_2d
        self.pre_seq_len = pre_seq_len
        self.prefix_projection = prefix_projection
        kwargs.pop("quantization_bit", None)  # a converted folder holds dequantized weights
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)


def gelu(x):
    """The original's tanh GeLU, written out as it is (same rounding)."""
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class RotaryTable(nn.Module):
    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        self.dim, self.base = dim, base

    def forward(self, positions, dtype):
        """cos, sin of shape [B, L, dim] for integer positions [B, L]."""
        # inv_freq is rounded to fp16 in the original (a buffer created .half()); the product runs in fp32 here,
        # as it does in the original once the model is cast to fp32.
        inv = (1.0 / (self.base ** (torch.arange(0, self.dim, 2, device=positions.device).float() / self.dim)))
        inv = inv.half().float()
        freqs = positions.float()[..., None] * inv
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


class PrefixEncoder(nn.Module):
    """P-Tuning v2 prefix: [B, pre_seq_len] -> [B, pre_seq_len, 2 * layers * hidden] (as THUDM's)."""

    def __init__(self, config):
        super().__init__()
        self.prefix_projection = config.prefix_projection
        if self.prefix_projection:
            self.embedding = nn.Embedding(config.pre_seq_len, config.hidden_size)
            self.trans = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.Tanh(),
                                       nn.Linear(config.hidden_size, config.num_layers * config.hidden_size * 2))
        else:
            self.embedding = nn.Embedding(config.pre_seq_len, config.num_layers * config.hidden_size * 2)

    def forward(self, prefix):
        out = self.embedding(prefix)
        return self.trans(out) if self.prefix_projection else out


class SelfAttention(nn.Module):
    def __init__(self, config, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.two_d = config.position_encoding_2d
        self.rotary = RotaryTable(self.head_dim // 2 if self.two_d else self.head_dim)
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=True)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=True)

    def _rotate(self, x, cos, sin):
        return x * cos + rotate_half(x) * sin

    def forward(self, hidden, position_ids, mask, cache=None, prefix_kv=None):
        b, n, _ = hidden.shape
        qkv = self.query_key_value(hidden).view(b, n, self.heads, 3 * self.head_dim)
        q, k, v = qkv.split(self.head_dim, dim=-1)  # [B, L, H, D] each
        if self.two_d:
            cos1, sin1 = self.rotary(position_ids[:, 0], q.dtype)
            cos2, sin2 = self.rotary(position_ids[:, 1], q.dtype)
            cos1, sin1, cos2, sin2 = (t[:, :, None, :] for t in (cos1, sin1, cos2, sin2))
            q1, q2 = q.chunk(2, dim=-1)
            k1, k2 = k.chunk(2, dim=-1)
            q = torch.cat([self._rotate(q1, cos1, sin1), self._rotate(q2, cos2, sin2)], dim=-1)
            k = torch.cat([self._rotate(k1, cos1, sin1), self._rotate(k2, cos2, sin2)], dim=-1)
        else:
            cos, sin = (t[:, :, None, :] for t in self.rotary(position_ids, q.dtype))
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
        if cache is not None:
            k, v = cache.update(k, v, self.layer_id)
        if prefix_kv is not None:  # P-Tuning v2: learned keys/values in front, never rotated, always visible
            k = torch.cat([prefix_kv[0].to(k.dtype), k], dim=2)
            v = torch.cat([prefix_kv[1].to(v.dtype), v], dim=2)
            mask = torch.cat([mask.new_ones(*mask.shape[:-1], prefix_kv[0].shape[2]), mask], dim=-1)
        coeff = float(self.layer_id + 1)
        scores = torch.matmul(q / (math.sqrt(self.head_dim) * coeff), k.transpose(-1, -2))
        scores = scores.float() * coeff
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = F.softmax(scores, dim=-1).to(v.dtype)
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.dense(ctx)


class GLU(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.inner_hidden_size, bias=True)
        self.dense_4h_to_h = nn.Linear(config.inner_hidden_size, config.hidden_size, bias=True)

    def forward(self, x):
        return self.dense_4h_to_h(gelu(self.dense_h_to_4h(x)))


class GLMBlock(_LayerBase):
    def __init__(self, config, layer_id: int):
        super().__init__()
        eps = config.layernorm_epsilon
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.attention = SelfAttention(config, layer_id)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.mlp = GLU(config)
        # The original builds every GLMBlock without passing num_layers, so its default 28 (the released depth) sets
        # alpha whatever config.num_layers is; kept, or shrunk/grown variants would not match the original code.
        self.alpha = (2 * 28) ** 0.5

    def forward(self, hidden, position_ids, mask, cache=None, prefix_kv=None):
        x = self.input_layernorm(hidden)
        hidden = x * self.alpha + self.attention(x, position_ids, mask, cache, prefix_kv)
        x = self.post_attention_layernorm(hidden)
        return x * self.alpha + self.mlp(x)


def positions_and_mask(input_ids, attention_mask, config):
    """2D position ids [B, 2, L] and the boolean attention mask [B, 1, L, L] (True = may attend) of full rows.

    `attention_mask` is the usual [B, L] padding mask (left or right padding); positions count real tokens only,
    as the original tokenizer computes them before padding.
    """
    b, n = input_ids.shape
    dev = input_ids.device
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    rel = (valid.long().cumsum(-1) - 1).clamp(min=0)
    idx = torch.arange(n, device=dev).expand(b, n)
    big = torch.full_like(idx, n)
    is_bos = (input_ids == config.bos_token_id) & valid
    has_bos = is_bos.any(-1)
    # the first <sop>; a row without one is plain causal text (context of length 0, positions count up)
    ctx = torch.where(has_bos, torch.where(is_bos, idx, big).min(-1).values, torch.zeros_like(has_bos, dtype=torch.long))
    has_g = ((input_ids == config.gmask_token_id) & valid).any(-1)
    mask_tok = torch.where(has_g, config.gmask_token_id, config.mask_token_id)
    is_mask = (input_ids == mask_tok[:, None]) & valid
    mpos_abs = torch.where(is_mask, idx, big).min(-1).values
    has_mask = mpos_abs < n
    mpos_rel = rel.gather(1, mpos_abs.clamp(max=n - 1)[:, None])
    ctx_rel = rel.gather(1, ctx.clamp(max=n - 1)[:, None])
    after = (idx >= ctx[:, None]) & has_bos[:, None]
    if config.position_encoding_2d:
        pos = torch.where(after & has_mask[:, None], mpos_rel.expand(b, n), rel)
        block = torch.where(after, rel - ctx_rel + 1, torch.zeros_like(rel))
        position_ids = torch.stack([pos, block], dim=1)
    else:
        # 1D (position_encoding_2d=false): only a [MASK] (not gMASK) row pins the answer to the mask position
        position_ids = torch.where(after & has_mask[:, None] & ~has_g[:, None], mpos_rel.expand(b, n), rel)
    causal = idx[:, None, :] <= idx[:, :, None]  # [B, Lq, Lk]
    in_context = idx[:, None, :] < ctx[:, None, None]
    mask = (causal | in_context) & valid[:, None, :]
    return position_ids, mask[:, None]


class ChatGLM6BPreTrainedModel(PreTrainedModel):
    config_class = ChatGLM6BConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GLMBlock"]
    _supports_sdpa = False

    def _init_weights(self, module):
        std = 0.02
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()


class ChatGLM6BModel(ChatGLM6BPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([GLMBlock(config, i) for i in range(config.num_layers)])
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.gradient_checkpointing = False
        if config.pre_seq_len:
            self.prefix_encoder = PrefixEncoder(config)
            self.prefix_dropout = nn.Dropout(0.1)
        self.post_init()

    def get_input_embeddings(self):
        return self.word_embeddings

    def set_input_embeddings(self, value):
        self.word_embeddings = value

    def prefix_kv(self, batch: int, device):
        """Per layer (keys, values) of the P-Tuning prefix, each [B, H, pre_seq_len, D]; None without one."""
        cfg = self.config
        if not cfg.pre_seq_len:
            return None
        tokens = torch.arange(cfg.pre_seq_len, device=device)[None].expand(batch, -1)
        kv = self.prefix_encoder(tokens)
        heads, hd = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
        kv = self.prefix_dropout(kv.view(batch, cfg.pre_seq_len, cfg.num_layers * 2, heads, hd))
        kv = kv.permute(2, 0, 3, 1, 4)  # [2 * layers, B, H, P, D]
        return [(kv[2 * i], kv[2 * i + 1]) for i in range(cfg.num_layers)]

    def forward(self, input_ids=None, position_ids=None, attention_mask=None, cache=None, inputs_embeds=None,
                use_cache=None, **kwargs):
        if input_ids is None:
            raise ValueError("ChatGLM-6B needs input_ids (its positions and mask come from where gMASK and <sop> are)")
        if position_ids is not None and self.config.position_encoding_2d and position_ids.dim() != 3:
            raise ValueError("ChatGLM-6B takes 2D position ids [batch, 2, length] (position, block position); got "
                             f"shape {tuple(position_ids.shape)} (train.packing is not supported for ChatGLM-6B: "
                             "set train.packing=false)")
        hidden = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = attention_mask.bool()
            if position_ids is None:
                raise ValueError("ChatGLM-6B: a 4D attention mask needs its 2D position ids")
        elif past:
            # Decoding after a filled cache: the new tokens come after <sop>, so they see every real cached key
            # and each other causally; their 2D positions must come from the caller (see decode_position_ids).
            if position_ids is None:
                raise ValueError("ChatGLM-6B: with a filled cache, pass 2D position_ids (generate() does, via "
                                 "prepare_inputs_for_generation; glmtune's server via decode_position_ids)")
            n = input_ids.shape[1]
            valid = (torch.ones(input_ids.shape[0], past + n, dtype=torch.bool, device=input_ids.device)
                     if attention_mask is None else attention_mask.bool())
            k_idx = torch.arange(past + n, device=input_ids.device)
            q_idx = torch.arange(n, device=input_ids.device) + past
            mask = (k_idx[None, :] <= q_idx[:, None])[None, None] & valid[:, None, None, :]
        else:
            pos, mask = positions_and_mask(input_ids, attention_mask, self.config)
            position_ids = pos if position_ids is None else position_ids
        prefix = self.prefix_kv(hidden.shape[0], hidden.device)
        for i, layer in enumerate(self.layers):
            hidden = layer(hidden, position_ids, mask, cache, None if prefix is None else prefix[i])
        return BaseModelOutputWithPast(last_hidden_state=self.final_layernorm(hidden), cache=cache)


class ChatGLM6BForCausalLM(ChatGLM6BPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "transformer.word_embeddings.weight"}
    # The context attends bidirectionally: a prompt prefix's keys/values depend on the tokens after it, so
    # prefix caching (serve.prefix_cache_tokens) would change answers.
    glmtune_prefix_cache_ok = False
    # A base checkpoint never holds the P-Tuning prefix encoder: it is trained, or loaded from the run afterwards.
    _keys_to_ignore_on_load_missing = [r"transformer\.prefix_encoder\..*"]

    def __init__(self, config):
        super().__init__(config)
        self.transformer = ChatGLM6BModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.word_embeddings

    def set_input_embeddings(self, value):
        self.transformer.word_embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None and not self.training:
            from transformers import DynamicCache

            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None
        hidden = self.transformer(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                                  cache=cache, inputs_embeds=inputs_embeds).last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
        else:  # a tensor of positions
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)

    def decode_position_ids(self, prompt_ids: list[int], index: int) -> list:
        """[[position], [block position]] ([position] with 1D positions) of the token at real index `index` (>= len(prompt_ids)) generated after
        `prompt_ids`: what `positions_and_mask` gives it in the whole row (for a caller that keeps its own cache)."""
        cfg = self.config
        if cfg.bos_token_id not in prompt_ids:
            return [[index], [0]] if cfg.position_encoding_2d else [index]
        ctx = prompt_ids.index(cfg.bos_token_id)
        mtok = cfg.gmask_token_id if cfg.gmask_token_id in prompt_ids else cfg.mask_token_id
        mpos = prompt_ids.index(mtok) if mtok in prompt_ids else None
        if not cfg.position_encoding_2d:
            return [mpos if mpos is not None and mtok != cfg.gmask_token_id else index]
        return [[mpos if mpos is not None else index], [index - ctx + 1]]

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, cache=None, attention_mask=None,
                                      inputs_embeds=None, is_first_iteration=None, past_key_values=None, **kwargs):
        """2D positions and the context/causal mask come from the *whole* row (where gMASK and <sop> are); only
        the tokens the cache has not seen are fed."""
        cache = cache if cache is not None else past_key_values
        seen = cache.get_seq_length() if cache is not None else 0
        position_ids, mask = positions_and_mask(input_ids, attention_mask, self.config)
        out = {"input_ids": input_ids[:, seen:], "position_ids": position_ids[..., seen:],
               "attention_mask": mask[:, :, seen:, :], "cache": cache}
        if "use_cache" in kwargs:
            out["use_cache"] = kwargs["use_cache"]
        if "logits_to_keep" in kwargs:
            out["logits_to_keep"] = kwargs["logits_to_keep"]
        return out


_REGISTERED = False


def register() -> None:
    """Make AutoConfig / AutoModelForCausalLM build these classes for `model_type: glmtune_chatglm6b`."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.register(MODEL_TYPE, ChatGLM6BConfig, exist_ok=True)
    AutoModelForCausalLM.register(ChatGLM6BConfig, ChatGLM6BForCausalLM, exist_ok=True)
    _REGISTERED = True
