"""Retrieval: the Retriever protocol, BM25 (bm25s; pyserini optional), dense (encoder + faiss),
hybrid (RRF), index build + manifest, shards of one index (corpus-wide BM25 statistics, exact merge),
HTTP schema. faiss, torch and pyserini load lazily."""

from s3_ray.retrieval.base import Retriever
from s3_ray.retrieval.bm25 import BM25Retriever
from s3_ray.retrieval.dense import DenseRetriever, FaissParams
from s3_ray.retrieval.encoders import ENCODERS, Encoder, EncoderSpec, encoder_factory, encoder_spec, load_encoder
from s3_ray.retrieval.hybrid import HybridRetriever, rrf_fuse
from s3_ray.retrieval.index import IndexMismatchError, Manifest, build_index, load_retriever
from s3_ray.retrieval.shard_merge import ShardedRetriever, ShardUnavailableError
from s3_ray.retrieval.shard_set import ShardSetError

__all__ = ["BM25Retriever", "DenseRetriever", "ENCODERS", "Encoder", "EncoderSpec", "FaissParams",
           "HybridRetriever", "IndexMismatchError", "Manifest", "Retriever", "ShardSetError", "ShardUnavailableError",
           "ShardedRetriever", "build_index", "encoder_factory", "encoder_spec", "load_encoder", "load_retriever",
           "rrf_fuse"]
