"""The embedded default data set (a generated fictional encyclopedia, see `world.py`).

`None` paths in `DataConfig` point here, so the demo runs with no download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from s3_ray.config import DataConfig
from s3_ray.data.qa import read_qa
from s3_ray.types import QAItem

SPLITS = ("train", "dev", "test")


def embedded_dir() -> Path:
    """Folder of the shipped corpus and QA splits."""
    return Path(__file__).resolve().parent / "embedded"


@dataclass(frozen=True)
class DataPaths:
    corpus: Path
    train: Path
    dev: Path
    test: Path

    def split(self, name: str) -> Path:
        """Path of one QA split.

        >>> DataPaths(Path("c"), Path("a"), Path("b"), Path("t")).split("dev")
        PosixPath('b')
        """
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)


def resolve_paths(cfg: DataConfig) -> DataPaths:
    """Config paths, with the embedded file wherever the config says None."""
    base = embedded_dir()

    def pick(value: str | None, default: str) -> Path:
        return Path(value) if value is not None else base / default

    return DataPaths(
        corpus=pick(cfg.corpus_path, "corpus.jsonl"),
        train=pick(cfg.train_path, "train.jsonl"),
        dev=pick(cfg.dev_path, "dev.jsonl"),
        test=pick(cfg.test_path, "test.jsonl"),
    )


def load_split(cfg: DataConfig, split: str) -> list[QAItem]:
    """Read one split; train_limit (train) / test_limit (dev and test) keep the first N (files are pre-shuffled)."""
    items = read_qa(resolve_paths(cfg).split(split))
    limit = cfg.train_limit if split == "train" else cfg.test_limit
    return items[:limit] if limit is not None else items
