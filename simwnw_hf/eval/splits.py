"""Which images an evaluation uses as memory bank (or probe training set) and which as queries.

An encoder scored on its own memory bank finds every query in the bank and reports ~100% kNN top-1,
so the bank and the queries are never the same images:

* a dataset with a real held-out split (``test``, or the split named by ``test_split``) uses it;
* a dataset with a single split (one parquet file, a folder holding only ``dev.parquet``) gets a
  seeded, class-stratified hold-out: :data:`HOLDOUT_FRACTION` of each class (seed
  :data:`HOLDOUT_SEED`) are the queries, the rest the bank, and the record says so;
* the same split name (or the same files) for bank and queries is refused.

A hold-out of the split the encoder was trained on still leaks the queries into SSL training; the
record states it (``queries_seen_in_training: true``). :func:`holdout_indices` /
:func:`planned_holdout_indices` give the query indices so a trainer can leave them out of training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch

from simwnw_hf.data.datasets import (ImageDataset, available_splits, is_local_source, load_image_dataset,
                                     split_files, subset_indices)

__all__ = ["HOLDOUT_FRACTION", "HOLDOUT_SEED", "HoldoutSpec", "TrainingData", "EvalSplits", "holdout_indices",
           "resolve_eval_splits", "planned_holdout_indices", "queries_seen_in_training", "same_source"]

HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0


@dataclass(frozen=True)
class HoldoutSpec:
    """Queries = ``round(fraction * n_c)`` images of each class c of ``of_split``, drawn with ``seed``."""

    of_split: str
    fraction: float = HOLDOUT_FRACTION
    seed: int = HOLDOUT_SEED

    def describe(self) -> str:
        return (f"seeded class-stratified hold-out of split '{self.of_split}' "
                f"({self.fraction:.0%} of each class, seed {self.seed})")

    def to_dict(self) -> dict:
        return {"of_split": self.of_split, "fraction": self.fraction, "seed": self.seed, "stratified_by": "label",
                "method": "simwnw_hf.eval.splits.holdout_indices"}


@dataclass(frozen=True)
class TrainingData:
    """What an encoder was trained on, to tell whether the queries were among its training images.

    ``excluded_holdout``: the run left the evaluation hold-out (:func:`planned_holdout_indices`) out.
    """

    dataset: Optional[str]
    split: Optional[str]
    excluded_holdout: bool = False


def holdout_indices(labels: Sequence[int], fraction: float = HOLDOUT_FRACTION, seed: int = HOLDOUT_SEED) -> List[int]:
    """Sorted indices of the hold-out queries: ``round(fraction * n_c)`` of each class c.

    Classes are visited in sorted order with one ``torch.Generator`` seeded ``seed``, so the choice
    depends only on the labels, the fraction and the seed. A class of two or more images keeps at
    least one image on each side; a class of one image stays in the bank.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"hold-out fraction must be in (0, 1), got {fraction}")
    labels = torch.as_tensor(list(labels), dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels).tolist():  # sorted
        members = (labels == cls).nonzero().flatten()
        n = members.numel()
        take = 0 if n < 2 else min(max(int(round(fraction * n)), 1), n - 1)
        order = torch.randperm(n, generator=generator)
        chosen.append(members[order[:take]])
    return sorted(torch.cat(chosen).tolist()) if chosen else []


def same_source(a: Optional[str], b: Optional[str]) -> bool:
    """Whether two dataset sources name the same data (local paths compared resolved)."""
    from simwnw_hf.data.datasets import _resolve_source

    if is_local_source(a) and is_local_source(b):
        return _resolve_source(a).resolve() == _resolve_source(b).resolve()
    return str(a) == str(b)


def _bank_split_name(source: Optional[str], split: Optional[str]) -> str:
    """The split name ``load_image_dataset`` will use for ``split`` (None: its default)."""
    if split is not None:
        return split
    names = available_splits(source)
    if not names:
        return "train"
    return "train" if "train" in names or len(names) > 1 else names[0]


def _hub_splits(source: str) -> Optional[List[str]]:
    """Split names of a Hub dataset when the Hub answers quickly, else None (loading will say why)."""
    from simwnw_hf.data.datasets import hub_offline_reason

    if hub_offline_reason() is not None:
        return None
    try:
        import datasets

        return list(datasets.get_dataset_split_names(source))
    except Exception:
        return None


@dataclass
class EvalSplits:
    """The bank and query images of one evaluation, and how they were chosen."""

    bank: ImageDataset
    queries: ImageDataset
    bank_split: str
    query_split: str
    query_source: str
    holdout: Optional[HoldoutSpec] = None
    query_indices: Optional[List[int]] = None  # into the full bank split (before max_* subsets), for a hold-out
    note: Optional[str] = None

    def record(self, queries_seen: Optional[bool]) -> dict:
        """The fields an eval result carries: which images were bank, which queries, and how many."""
        if self.holdout is not None:
            train_split = f"{self.bank_split} minus hold-out"
            test_split = f"{self.bank_split} hold-out ({self.holdout.fraction:.0%} per class, seed {self.holdout.seed})"
        else:
            train_split, test_split = self.bank_split, self.query_split
        out = {
            "dataset": self.bank.source, "train_split": train_split, "test_split": test_split,
            "bank": {"dataset": self.bank.source, "split": self.bank_split,
                     "images": "all but the hold-out" if self.holdout else "whole split",
                     "num_images": len(self.bank)},
            "queries": {"dataset": self.query_source, "split": self.query_split if self.holdout is None
                        else self.bank_split, "images": "hold-out" if self.holdout else "whole split",
                        "num_images": len(self.queries)},
            "holdout": self.holdout.to_dict() if self.holdout else None,
            "queries_seen_in_training": queries_seen,
        }
        note = self.note
        if queries_seen:
            note = ((note + "; ") if note else "") + ("the queries were among the encoder's SSL training images "
                                                      "(queries_seen_in_training: true), so top-1 is optimistic")
        if note:
            out["note"] = note
        return out


def _subset(images: ImageDataset, indices: List[int], max_samples: Optional[int], split_label: str) -> ImageDataset:
    if max_samples is not None:
        indices = [indices[i] for i in subset_indices(len(indices), max_samples)]
    return ImageDataset(images.hf_dataset.select(indices), images.image_column, images.label_column,
                        images.source, split_label)


def _refuse_overlap(dataset, bank_split, query_source, test_split) -> None:
    if same_source(dataset, query_source) and bank_split == test_split:
        raise ValueError(f"bank and query split are both '{bank_split}' of {dataset or 'sample'}: the model would be "
                         f"scored on its own memory bank; pass another --test-split, or a dataset with one split to "
                         f"get a seeded hold-out")
    bank_files, query_files = split_files(dataset, bank_split), split_files(query_source, test_split)
    if bank_files and query_files and set(bank_files) & set(query_files):
        shared = sorted(str(p) for p in set(bank_files) & set(query_files))
        raise ValueError(f"bank split '{bank_split}' and query split '{test_split}' read the same file(s) "
                         f"{shared[:3]}: the model would be scored on its own memory bank; pass a real held-out split")


def resolve_eval_splits(dataset: Optional[str], train_split: Optional[str] = None, test_split: Optional[str] = "test",
                        image_column: Optional[str] = None, label_column: Optional[str] = None,
                        max_train: Optional[int] = None, max_test: Optional[int] = None,
                        query_dataset: Optional[str] = None, holdout_fraction: float = HOLDOUT_FRACTION,
                        holdout_seed: int = HOLDOUT_SEED) -> EvalSplits:
    """Bank and query images for evaluating on ``dataset`` (see the module docstring).

    Args:
        train_split: split of the bank (None: the dataset's default, ``train`` when there is one).
        test_split: split of the queries. When ``dataset`` has only one split (or ``test_split`` is
            None), the queries are a hold-out of the bank split instead. A name missing from a dataset
            that has several splits is an error naming the ones there are.
        query_dataset: another source for the queries (default: ``dataset``).
        max_train / max_test: fixed random subsets (seed 0) of the bank / queries, after the hold-out.
    """
    query_source = dataset if query_dataset is None else query_dataset
    bank_split = _bank_split_name(dataset, train_split)
    holdout = None
    if same_source(dataset, query_source):
        names = available_splits(dataset) if is_local_source(dataset) else _hub_splits(str(dataset))
        from simwnw_hf.data.datasets import _resolve_source

        if is_local_source(dataset) and _resolve_source(dataset).is_file():
            names = [bank_split]  # one file is one split, whatever the caller names it
        if test_split is None or (names is not None and test_split not in names and names == [bank_split]):
            holdout = HoldoutSpec(bank_split, holdout_fraction, holdout_seed)
        elif names is not None and test_split not in names:
            raise ValueError(f"split '{test_split}' not found in {dataset or 'sample'}; available: {sorted(names)}; "
                             f"pass --test-split with one of them")
    if holdout is None:
        _refuse_overlap(dataset, bank_split, query_source, test_split)
        bank = load_image_dataset(dataset, bank_split, image_column, label_column, max_train)
        queries = load_image_dataset(query_source, test_split, image_column, label_column, max_test)
        return EvalSplits(bank, queries, bank_split, queries.split, queries.source)

    full = load_image_dataset(dataset, bank_split, image_column, label_column)
    if full.label_column is None:
        raise ValueError(f"dataset {full.source!r} split {bank_split!r} has no label column; name it with --label-column")
    query_idx = holdout_indices(full.labels, holdout.fraction, holdout.seed)
    if not query_idx:  # e.g. the 500-image ImageNet sample: 500 classes of one image each
        raise ValueError(f"top-1 cannot be measured on split '{bank_split}' of {full.source}: every class has a single "
                         f"image, so no held-out query would have a same-class image in the bank; pass a dataset with a "
                         f"test split or several images per class (e.g. the bundled sample)")
    taken = set(query_idx)
    bank_idx = [i for i in range(len(full)) if i not in taken]
    missing = "" if test_split is None else f"no split '{test_split}' in {full.source} (only '{bank_split}'); "
    note = f"{missing}queries are a {holdout.describe()}; the bank is the rest of '{bank_split}'"
    return EvalSplits(_subset(full, bank_idx, max_train, bank_split), _subset(full, query_idx, max_test, bank_split),
                      bank_split, bank_split, full.source, holdout, query_idx, note)


def planned_holdout_indices(dataset: Optional[str], split: Optional[str] = None, eval_split: Optional[str] = "test",
                            label_column: Optional[str] = None, fraction: float = HOLDOUT_FRACTION,
                            seed: int = HOLDOUT_SEED) -> Optional[List[int]]:
    """Indices (into the full ``split``) that a run-end evaluation will use as hold-out queries.

    None when ``eval_split`` is a real held-out split. For a trainer: leave these out of the training
    images (before ``max_samples``) and pass ``TrainingData(..., excluded_holdout=True)`` to the evaluation.
    """
    splits = resolve_eval_splits(dataset, split, eval_split, label_column=label_column, max_train=1, max_test=1,
                                 holdout_fraction=fraction, holdout_seed=seed)
    return splits.query_indices


def queries_seen_in_training(splits: EvalSplits, trained_on: Union[TrainingData, str, None]) -> Optional[bool]:
    """Whether the encoder was trained on the query images; None when nobody told us what it saw.

    ``trained_on``: ``"bank"`` (trained on the whole bank split: the trainer's run-end kNN),
    ``"untrained"`` (random init), None (unknown), or a :class:`TrainingData`.
    """
    if trained_on == "untrained":
        return False
    if trained_on is None:
        return None
    if trained_on == "bank":
        return splits.holdout is not None
    if not isinstance(trained_on, TrainingData):
        raise ValueError(f"trained_on must be 'bank', 'untrained', None or a TrainingData, got {trained_on!r}")
    if not same_source(trained_on.dataset, splits.query_source):
        return False
    trained_split = _bank_split_name(trained_on.dataset, trained_on.split)
    query_split = splits.bank_split if splits.holdout is not None else splits.query_split
    if trained_split != query_split:
        return False
    return not (splits.holdout is not None and trained_on.excluded_holdout)
