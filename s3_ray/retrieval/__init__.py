"""Retrieval: the Retriever protocol, BM25 over bm25s, index build + manifest, HTTP schema."""

from s3_ray.retrieval.base import Retriever
from s3_ray.retrieval.bm25 import BM25Retriever
from s3_ray.retrieval.index import IndexMismatchError, Manifest, build_index, load_retriever

__all__ = ["BM25Retriever", "IndexMismatchError", "Manifest", "Retriever", "build_index", "load_retriever"]
