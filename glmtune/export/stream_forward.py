"""Logits and greedy tokens of a saved model folder with one decoder layer resident at a time.

The reference side of the GGUF and bitsandbytes checks (gguf_verify.py, bnb.py) is the merged full-precision
folder in float32; loading it whole costs 4 bytes per parameter (66 GB for GLM-4-9B). Here the model is built
on the meta device (verify.py's `_skeleton`) and each decoder layer's weights are read from the safetensors
files just before the layer runs and dropped right after (verify.py's `_Weights`, pread, no memory map); the
embedding is read row by row (only the prompts' tokens) and the head in slices of the vocabulary. All
sequences go through in one right-padded batch (causal attention: real tokens never see the padding), so a
greedy step is one pass over the weights for every prompt at once.

Peak memory: one decoder layer in float32, one head slice, the activations and the logits asked for.
Model types verify.py cannot stream (remote code, types outside STREAMABLE_TYPES) raise `CannotStream`;
the callers then load the whole model, with a note in their record.
"""

from __future__ import annotations

import json
from pathlib import Path


class StreamedModel:
    """A model folder run layer by layer; `logits(ids)` and `greedy(ids, stops, n)` as a loaded model would."""

    def __init__(self, folder: str | Path, device: str = "cpu"):
        import torch

        from glmtune.export.merge import ExportError, checkpoint_files
        from glmtune.export.verify import _skeleton, _Weights
        from glmtune.methods.freeze import decoder_layers

        self.folder = Path(folder)
        self.device = torch.device(device)
        self.bnb: dict[int, object] = {}  # id(bitsandbytes linear) -> its meta weight (the kwargs to rebuild it)
        if "quantization_config" in json.loads((self.folder / "config.json").read_text()):
            self.model = self._quantized_skeleton()
        else:
            self.model = _skeleton(self.folder, self.device)  # raises CannotStream before anything heavy
        self.weights = _Weights(self.model, checkpoint_files(self.folder))
        if self.weights.missing:
            raise ExportError(f"{self.folder} lacks tensors {self.weights.missing[:3]}")
        names = {id(m): n for n, m in self.model.named_modules()}
        embed, head = self.model.get_input_embeddings(), self.model.get_output_embeddings()
        from glmtune.export.verify import CannotStream

        if type(head) is not torch.nn.Linear or type(embed) is not torch.nn.Embedding:
            raise CannotStream(f"{type(self.model).__name__}: head or embedding is not a plain Linear/Embedding")
        self.head, self.head_name = head, names[id(head)]
        embed_name = names[id(embed)]
        layers_name, layers = decoder_layers(self.model)
        skip = (layers_name + ".", embed_name + ".", self.head_name + ".")
        others = sorted({n.rsplit(".", 1)[0] for n, _ in self.model.named_parameters() if not n.startswith(skip)})
        wrap = _loader_class()
        for name in [f"{layers_name}.{i}" for i in range(len(layers))] + others:
            parent, _, child = name.rpartition(".")
            owner = self.model.get_submodule(parent) if parent else self.model
            setattr(owner, child, wrap(name, self.model.get_submodule(name), self))
        parent, _, child = embed_name.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, child, _rows_class()(embed_name, self))
        self.vocab, self.hidden = head.weight.shape

    def _quantized_skeleton(self):
        """A bitsandbytes folder (export/bnb.py's output): transformers' bnb quantizer puts its Linear4bit /
        Linear8bitLt modules into the meta skeleton, as `from_pretrained` does before loading."""
        import bitsandbytes as bnb
        import torch
        from accelerate import init_empty_weights
        from accelerate.utils import set_module_tensor_to_device
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.quantizers import AutoHfQuantizer

        from glmtune.export.verify import CannotStream, streamable

        config = AutoConfig.from_pretrained(str(self.folder))
        why = streamable(config)
        if why:
            raise CannotStream(why)
        quantizer = AutoHfQuantizer.from_config(config.quantization_config, pre_quantized=True)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        quantizer.preprocess_model(model=model, dtype=torch.float32, device_map={"": self.device.type},
                                   checkpoint_files=None, use_kernels=False)
        for n, b in list(model.named_buffers()):
            set_module_tensor_to_device(model, n, self.device, value=b)
        for m in model.modules():
            if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
                self.bnb[id(m)] = m.weight
        return model.eval()

    def load(self, module, prefix: str) -> None:
        """Put the weights of `module` (named `prefix`) in place: plain ones in float32, bnb ones rebuilt from
        their saved statistics with the calls transformers' bnb loader makes."""
        import bitsandbytes as bnb

        from glmtune.export.verify import _load, _read

        if not self.bnb:
            return _load(module, prefix, self.weights, self.device)
        from accelerate.utils import set_module_tensor_to_device

        for sub_name, sub in module.named_modules():
            meta = self.bnb.get(id(sub))
            p = prefix + (sub_name + "." if sub_name else "")
            for n, _ in list(sub.named_parameters(recurse=False)):
                if meta is not None and n == "weight":
                    f = self.weights.file_of[p + "weight"]
                    data = _read(f, p + "weight").to(self.device)
                    if isinstance(sub, bnb.nn.Linear4bit):
                        stats = {k[len(p + "weight."):]: _read(f2, k).to(self.device) for k, f2 in
                                 self.weights.file_of.items() if k.startswith(p + "weight.")}
                        sub._parameters["weight"] = bnb.nn.Params4bit.from_prequantized(
                            data=data, quantized_stats=stats, requires_grad=False, device=self.device, module=sub)
                        sub.support_avx512bf16_for_cpu = False  # keep the standard layout (methods/qlora.py)
                    else:
                        kwargs = dict(meta.__dict__)
                        kwargs["SCB"] = _read(self.weights.file_of[p + "SCB"], p + "SCB").to(self.device)
                        sub._parameters["weight"] = bnb.nn.Int8Params(data, requires_grad=False, **kwargs).to(self.device)
                else:
                    set_module_tensor_to_device(sub, n, self.device, value=self.weights.get(p + n, self.device))

    def unload(self, module) -> None:
        from glmtune.utils.memory import release_freed_memory
        from glmtune.export.verify import _unload

        if not self.bnb:
            return _unload(module)
        from accelerate.utils import set_module_tensor_to_device

        for sub in module.modules():
            meta = self.bnb.get(id(sub))
            for n, _ in list(sub.named_parameters(recurse=False)):
                if meta is not None and n == "weight":
                    sub._parameters["weight"] = meta
                else:
                    set_module_tensor_to_device(sub, n, "meta")
            if meta is not None and getattr(sub, "state", None) is not None:  # 8-bit: the int8 weight cached on use
                sub.state.CB = sub.state.SCB = None
        release_freed_memory()

    def _hidden(self, ids: list[list[int]]):
        import torch

        width = max(len(p) for p in ids)
        x = torch.zeros(len(ids), width, dtype=torch.long)
        for i, p in enumerate(ids):
            x[i, :len(p)] = torch.tensor(p)
        return self.model.base_model(input_ids=x.to(self.device), use_cache=False).last_hidden_state

    def _head(self, h):
        """Logits [..., vocab] of hidden states `h`, the head read one slice of the vocabulary at a time."""
        import torch

        from glmtune.utils.memory import release_freed_memory
        from glmtune.export.verify import _HEAD_SLICE_FLOATS

        step = max(1, _HEAD_SLICE_FLOATS // self.hidden)
        out = torch.empty(*h.shape[:-1], self.vocab, device=self.device)
        for a in range(0, self.vocab, step):
            rows = (a, min(self.vocab, a + step))
            part = h @ self.weights.get(self.head_name + ".weight", self.device, rows).T
            if getattr(self.head, "bias", None) is not None:
                part = part + self.weights.get(self.head_name + ".bias", self.device, rows)
            out[..., rows[0]:rows[1]] = part
            del part
            release_freed_memory()
        return out

    def logits(self, ids: list[list[int]]) -> list:
        """Float32 logits [len(p), vocab] of every position of each prompt (CPU tensors)."""
        import torch

        with torch.inference_mode():
            h = self._hidden(ids)
            return [self._head(h[i, :len(p)]).float().cpu() for i, p in enumerate(ids)]

    def last_logits(self, ids: list[list[int]]):
        """Float32 logits [n, vocab] of each sequence's last position (one pass over the weights)."""
        import torch

        with torch.inference_mode():
            h = self._hidden(ids)
            last = torch.stack([h[i, len(p) - 1] for i, p in enumerate(ids)])
            return self._head(last).float().cpu()

    def greedy(self, ids: list[list[int]], stop_ids, max_new: int) -> tuple[list[list[int]], list[list]]:
        """Greedy tokens of each prompt (argmax, stopping at a stop id) and the logits each step chose from."""
        seqs, new, steps = [list(p) for p in ids], [[] for _ in ids], [[] for _ in ids]
        live = list(range(len(ids)))
        for _ in range(max_new):
            if not live:
                break
            last = self.last_logits([seqs[i] for i in live])
            still = []
            for row, i in enumerate(live):
                nxt = int(last[row].argmax())
                steps[i].append(last[row].numpy())
                new[i].append(nxt)
                seqs[i].append(nxt)
                if nxt not in stop_ids:
                    still.append(i)
            live = still
        return new, steps


def _loader_class():
    import torch

    class Loaded(torch.nn.Module):
        """Stands in for one module: its weights are read just before it runs and dropped after."""

        def __init__(self, name: str, module, owner: StreamedModel):
            super().__init__()
            self.name, self.owner = name, owner
            self.inner = [module]  # a plain list: not a submodule, so the skeleton's names stay the same

        def forward(self, *args, **kwargs):
            module = self.inner[0]
            self.owner.load(module, self.name + ".")
            try:
                return module(*args, **kwargs)
            finally:
                self.owner.unload(module)

    return Loaded


def _rows_class():
    import torch

    class Rows(torch.nn.Module):
        """The embedding: only the rows of the tokens in the batch are read."""

        def __init__(self, name: str, owner: StreamedModel):
            super().__init__()
            self.name, self.owner = name, owner

        def forward(self, x):
            uniq = torch.unique(x)
            rows = torch.cat([self.owner.weights.get(self.name + ".weight", self.owner.device, (int(i), int(i) + 1))
                              for i in uniq])
            return rows[torch.searchsorted(uniq, x)]

    return Rows
