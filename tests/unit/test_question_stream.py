import pytest

from s3_ray.rl.loop.trainer import QuestionStream
from s3_ray.types import QAItem

ITEMS = [QAItem(str(i), f"q{i}?", ("a",)) for i in range(5)]


def test_epochs_cover_every_question_once():
    s = QuestionStream(ITEMS, seed=3)
    first = [q.id for q in s.take(5)]
    assert sorted(first) == [str(i) for i in range(5)]
    second = [q.id for q in s.take(5)]
    assert sorted(second) == sorted(first) and s.epoch == 1


def test_state_round_trip_resumes_the_same_order():
    a = QuestionStream(ITEMS, seed=1)
    a.take(7)
    b = QuestionStream(ITEMS, seed=1)
    b.load_state(a.state())
    assert [q.id for q in a.take(6)] == [q.id for q in b.take(6)]


def test_empty_split_is_an_error():
    with pytest.raises(ValueError, match="no training questions"):
        QuestionStream([], seed=0)
