"""Data: JSONL corpus and QA readers, and the embedded fictional-encyclopedia data set."""

from s3_ray.data.corpus import read_corpus, write_corpus
from s3_ray.data.embedded import DataPaths, embedded_dir, load_split, resolve_paths
from s3_ray.data.jsonl import DataError
from s3_ray.data.qa import read_qa, write_qa

__all__ = ["DataError", "DataPaths", "embedded_dir", "load_split", "read_corpus", "read_qa",
           "resolve_paths", "write_corpus", "write_qa"]
