"""One protocol per concept: every retriever and the generator client satisfy the shared
`Retriever` / `Answerer` / `Generator` protocols that the rollout, the reward and the evaluation
annotate with (no layer keeps its own copy)."""

from __future__ import annotations

from typing import Any

from s3_ray.clients import GeneratorClient, RetrieverClient
from s3_ray.generation import Answerer, Generator, Messages
from s3_ray.retrieval import Retriever
from s3_ray.types import Passage
from tests.fakes import FakeRetriever


class EchoGenerator:
    """A `Generator`: completes every prompt with its last message."""

    model_id = "echo"
    decoding: dict[str, Any] = {"backend": "echo"}

    def generate(self, prompts: list[Messages]) -> list[str]:
        return [p[-1]["content"] for p in prompts]


def test_generator_client_is_the_answerer_the_reward_and_evaluation_use() -> None:
    gen = EchoGenerator()
    assert isinstance(gen, Generator) and not isinstance(gen, Answerer)  # no `answer`: not a client
    client = GeneratorClient.in_process(gen)
    assert isinstance(client, Answerer)
    assert client.model_id == "echo"
    (answer,) = client.answer(["Who?"], [[Passage("d1", '"T"\nText.')]])
    assert "Who?" in answer  # s3's answer prompt ends with the question


def test_every_retriever_and_the_retriever_client_share_one_protocol() -> None:
    fake = FakeRetriever()
    client = RetrieverClient.in_process(fake)
    assert isinstance(fake, Retriever) and isinstance(client, Retriever)
    assert [h.passage.id for h in client.search(["Alder Town"], 1)[0]] == [h.passage.id for h in
                                                                          fake.search(["Alder Town"], 1)[0]]

