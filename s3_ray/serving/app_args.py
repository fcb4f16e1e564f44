"""The one shape of a Serve app's typed builder args: sections of `S3Config`, plus a few app keys.

Each app's args model (`deployments/*.py`) declares the config sections it needs under their
`S3Config` names (`serve: ServeConfig`, `retrieval: RetrievalConfig`, ...) and reuses their fields
and checks instead of re-declaring them. Two ways in:

* from a job: `RetrieverAppArgs.from_config(cfg)` takes those sections from the job's config;
* from `serve run module:build_app key=value ...` or a Serve config file's `args:`: nested
  (`serve: {retriever_cpus: 0.5}`) or flat (`retriever_cpus=0.5`); a flat key goes to the one
  section that has such a field, and an unknown or ambiguous key is an error naming it.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, model_validator


class AppArgs(BaseModel):
    """Base of the apps' builder args; subclasses add section and app fields."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def sections(cls) -> dict[str, type[BaseModel]]:
        """Field name -> model of each config section these args hold."""
        out: dict[str, type[BaseModel]] = {}
        for name, info in cls.model_fields.items():
            kind = info.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                out[name] = kind
        return out

    @classmethod
    def from_config(cls, cfg: Any, **fields: Any) -> Self:
        """Args whose sections come from an `S3Config`; `fields` sets the app's own keys."""
        return cls(**{name: getattr(cfg, name) for name in cls.sections()}, **fields)

    @classmethod
    def coerce(cls, args: Self | dict[str, Any]) -> Self:
        """`args` itself, or validated from its dict form (as a Serve config file gives it)."""
        return args if isinstance(args, cls) else cls.model_validate(args)

    @model_validator(mode="before")
    @classmethod
    def _gather_flat_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        sections = cls.sections()
        out: dict[str, Any] = {}
        flat: dict[str, dict[str, Any]] = {}
        for key, value in data.items():
            owners = [s for s, model in sections.items() if key in model.model_fields]
            if key in cls.model_fields or not owners:
                out[key] = value  # an unknown key stays here, where extra="forbid" names it
            elif len(owners) > 1:
                raise ValueError(f"{key!r} is a field of {' and '.join(owners)}; give it nested, e.g. "
                                 f"{owners[0]}: {{{key}: ...}}")
            else:
                flat.setdefault(owners[0], {})[key] = value
        for section, values in flat.items():
            nested = out.get(section, {})
            if isinstance(nested, BaseModel):
                nested = nested.model_dump()
            if not isinstance(nested, dict):
                raise ValueError(f"{section} must be a mapping, got {type(nested).__name__}")
            if twice := sorted(set(nested) & set(values)):
                raise ValueError(f"{', '.join(twice)} given both flat and under {section}; give each key once")
            out[section] = {**nested, **values}
        return out
