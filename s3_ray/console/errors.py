"""Which failures are the user's to fix, and how a failure reads on the console.

A *known* error is one whose message already says what is wrong and where (a config key, a data
file and line, a model name, a baseline made with other settings, a Serve app serving something
else, an input a job needs). It prints as `error: <message>` and exits with status 2. Anything
else is a failure of the run: `error: <Type>: <message>`, status 1, and the traceback is kept in
the job's log. The classes are named, not imported, so checking an error loads nothing: an
exception's class is always importable by the time it is raised.
"""

from __future__ import annotations

KNOWN_ERRORS = frozenset({
    "s3_ray.config.base.ConfigError",
    "s3_ray.data.jsonl.DataError",
    "s3_ray.generation.likelihood.AnswerLogprobUnsupported",
    "s3_ray.data.datasets.DatasetUnavailable",
    "s3_ray.models.registry.ModelError",
    "s3_ray.plans.plan.InputError",
    "s3_ray.retrieval.encoders.EncoderError",
    "s3_ray.retrieval.faiss_build.FaissBuildError",
    "s3_ray.retrieval.manifest.IndexMismatchError",
    "s3_ray.retrieval.lucene.LuceneUnavailableError",
    "s3_ray.reward.baseline_file.BaselineError",
    "s3_ray.reward.baseline_file.BaselineMissing",
    "s3_ray.serving.guard.GuardConfigError",
    "s3_ray.serving.served.ServedMismatch",
})

EXIT_KNOWN = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
EXIT_TERMINATED = 143   # 128 + SIGTERM


class Terminated(BaseException):
    """The process got SIGTERM (a process manager, `kill`, `ray job stop`). A BaseException, like
    KeyboardInterrupt, so that `except Exception` blocks do not swallow it."""


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def cause(err: BaseException) -> BaseException:
    """The exception a Ray task or actor raised, for the error Ray re-raised in the driver
    (`RayTaskError(DataError)` carries the original as `cause`), else `err` itself."""
    inner = getattr(err, "cause", None)
    return inner if isinstance(inner, BaseException) and type(err).__module__.startswith("ray.") else err


def is_known(err: BaseException) -> bool:
    """Whether `err` (or the error a Ray task raised for it) is one of `KNOWN_ERRORS`.

    >>> from s3_ray.config import ConfigError
    >>> is_known(ConfigError("train.nope: unknown key")), is_known(RuntimeError("boom"))
    (True, False)
    """
    return any(_name(cls) in KNOWN_ERRORS for cls in type(cause(err)).__mro__)


def message(err: BaseException) -> str:
    """The error as the console prints it after `error: `.

    >>> from s3_ray.data.jsonl import DataError
    >>> message(DataError("answerable.jsonl", 46, "duplicate id 'q7'"))
    "answerable.jsonl:46: duplicate id 'q7'"
    >>> message(RuntimeError("training finished without a checkpoint"))
    'RuntimeError: training finished without a checkpoint'
    >>> message(KeyError("q9 has no baseline record"))
    'KeyError: q9 has no baseline record'
    """
    inner = cause(err)
    text = str(inner.args[0]) if isinstance(inner, KeyError) and inner.args else str(inner)
    text = text.strip() or "(no message)"
    return text if is_known(inner) else f"{type(inner).__name__}: {text}"


def exit_status(err: BaseException) -> int:
    """2 for a known error, 130 for Ctrl-C, 143 for SIGTERM, else 1."""
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(err, Terminated):
        return EXIT_TERMINATED
    return EXIT_KNOWN if is_known(err) else EXIT_FAILED
