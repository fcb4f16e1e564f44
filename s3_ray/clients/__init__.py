"""Typed, picklable clients for the Serve apps (or any compatible HTTP server, or in-process objects)."""

from s3_ray.clients.generator import GeneratorCallError, GeneratorClient
from s3_ray.clients.retriever import RetrieverClient, RetrieverError

__all__ = ["GeneratorCallError", "GeneratorClient", "RetrieverClient", "RetrieverError"]
