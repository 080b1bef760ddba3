"""The GGUF types glmtune writes: how each is made (llama.cpp's converter or its quantizer) and its size.

Shared by export (which writes them) and plan (which sizes them), so neither imports the other for it.
"""

from __future__ import annotations

# name -> how it is made: ("convert", converter --outtype) or ("quantize", llama.cpp LLAMA_FTYPE_* name).
QUANTS: dict[str, tuple[str, str]] = {
    "f32": ("convert", "f32"),
    "f16": ("convert", "f16"),
    "bf16": ("convert", "bf16"),
    "q8_0": ("quantize", "LLAMA_FTYPE_MOSTLY_Q8_0"),
    "q6_k": ("quantize", "LLAMA_FTYPE_MOSTLY_Q6_K"),
    "q5_k_m": ("quantize", "LLAMA_FTYPE_MOSTLY_Q5_K_M"),
    "q4_k_m": ("quantize", "LLAMA_FTYPE_MOSTLY_Q4_K_M"),
}
# Average bits per weight of each type over a whole model, as llama.cpp measured them on Llama-3.1-8B
# (tools/quantize/README.md of the vendored llama.cpp; k-quant mixes keep some tensors at higher precision).
BITS_PER_WEIGHT = {"f32": 32.0, "f16": 16.0005, "bf16": 16.0005, "q8_0": 8.5008, "q6_k": 6.5633,
                   "q5_k_m": 5.7036, "q4_k_m": 4.8944}
