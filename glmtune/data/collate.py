"""Batch collation: right-pad to the longest sample in the batch (to a multiple of 8).

>>> import torch
>>> c = PadCollator(pad_id=0)
>>> b = c([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}])
>>> b["input_ids"].tolist(), b["labels"].tolist(), b["attention_mask"].tolist()
([[5, 6, 7], [5, 0, 0]], [[-100, 6, 7], [5, -100, -100]], [[1, 1, 1], [1, 0, 0]])
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PadCollator:
    pad_id: int
    pad_to_multiple_of: int = 1

    def __call__(self, features: list[dict]) -> dict:
        import torch

        n = max(len(f["input_ids"]) for f in features)
        m = self.pad_to_multiple_of
        n = ((n + m - 1) // m) * m
        ids = torch.full((len(features), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), n), -100, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.tensor(f["input_ids"])
            labels[i, :k] = torch.tensor(f["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class ExampleDataset:
    """A torch-style dataset over rendered Examples (lengths exposed for length-grouped sampling)."""

    def __init__(self, examples):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        return {"input_ids": ex.input_ids, "labels": ex.labels}

    @property
    def lengths(self) -> list[int]:
        return [len(e) for e in self.examples]
