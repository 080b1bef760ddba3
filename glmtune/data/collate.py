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


@dataclass
class PackedCollator:
    """Padding-free packing: a micro-batch's samples are concatenated (first fit decreasing) into
    rows of at most `max_len` tokens; `position_ids` restart at 0 for every sample and no attention_mask is
    returned, so transformers (`masking_utils.find_packed_sequence_indices`, sdpa/eager/flash) builds a
    block-diagonal causal mask: no token attends across a sample boundary. The first label of every sample
    is set to -100, because after the causal shift it would be the target of the *previous* sample's last
    token (unpacked, position 0 is never a target either). Row tails are padding: label -100, positions
    continuing from 0 as a block of their own.

    >>> c = PackedCollator(pad_id=0, max_len=6)
    >>> b = c([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]},
    ...        {"input_ids": [4, 4, 4], "labels": [4, 4, 4]}])
    >>> b["input_ids"].tolist()
    [[5, 6, 7, 4, 4, 4], [8, 9, 0, 0, 0, 0]]
    >>> b["labels"].tolist()
    [[-100, 6, 7, -100, 4, 4], [-100, 9, -100, -100, -100, -100]]
    >>> b["position_ids"].tolist()
    [[0, 1, 2, 0, 1, 2], [0, 1, 0, 1, 2, 3]]
    """

    pad_id: int
    max_len: int

    def rows(self, features: list[dict]) -> list[list[int]]:
        """Indices of the samples in each packed row (first fit decreasing keeps rows full)."""
        order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
        rows: list[list[int]] = []
        room: list[int] = []
        for i in order:
            n = len(features[i]["input_ids"])
            if n > self.max_len:
                raise ValueError(f"sample of {n} tokens is longer than the packing row ({self.max_len}); "
                                 "render with data.cutoff_len first")
            j = next((r for r, free in enumerate(room) if free >= n), None)
            if j is None:
                rows.append([i])
                room.append(self.max_len - n)
            else:
                rows[j].append(i)
                room[j] -= n
        for r in rows:
            r.sort()  # keep the given order inside a row
        return sorted(rows)

    def __call__(self, features: list[dict]) -> dict:
        import torch

        rows = self.rows(features)
        width = max(sum(len(features[i]["input_ids"]) for i in r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            at = 0
            for i in r:
                k = len(features[i]["input_ids"])
                ids[b, at:at + k] = torch.tensor(features[i]["input_ids"])
                labels[b, at + 1:at + k] = torch.tensor(features[i]["labels"][1:])
                pos[b, at:at + k] = torch.arange(k)
                at += k
            pos[b, at:] = torch.arange(width - at)
        return {"input_ids": ids, "labels": labels, "position_ids": pos}
