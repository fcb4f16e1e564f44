"""The Search-R1 / s3 retrieval HTTP API as pydantic models, plus pure converters.

`POST /retrieve` `{"queries": [...], "topk": k, "return_scores": bool}` ->
`{"result": [[{"document": {"id", "contents"}, "score": float}, ...] per query]}`; with
`return_scores: false` each per-query list holds bare documents.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from s3_ray.types import Passage, SearchHit

MAX_TOPK = 100


class Document(BaseModel):
    model_config = ConfigDict(extra="allow")  # other servers add title/text; we keep what they send

    id: str
    contents: str

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class ScoredDocument(BaseModel):
    document: Document
    score: float


class RetrieveRequest(BaseModel):
    """Validated request. `max_batch` comes from the server's config through validation context.

    >>> RetrieveRequest.model_validate({"queries": ["a"], "topk": 3}).return_scores
    True
    >>> from pydantic import ValidationError
    >>> try:
    ...     RetrieveRequest.model_validate({"queries": ["a", "b"]}, context={"max_batch": 1})
    ... except ValidationError as err:
    ...     print(err.errors()[0]["loc"], err.errors()[0]["msg"])
    ('queries',) Value error, batch of 2 queries exceeds max_batch=1
    """

    model_config = ConfigDict(extra="forbid")

    queries: list[str] = Field(..., min_length=1)
    topk: int = Field(3, ge=1, le=MAX_TOPK)
    return_scores: bool = True

    @field_validator("queries")
    @classmethod
    def _batch_fits(cls, v: list[str], info: ValidationInfo) -> list[str]:
        max_batch = (info.context or {}).get("max_batch")
        if max_batch is not None and len(v) > max_batch:
            raise ValueError(f"batch of {len(v)} queries exceeds max_batch={max_batch}")
        return v


class RetrieveResponse(BaseModel):
    result: list[list[ScoredDocument]] | list[list[Document]]


def hits_to_json(hits: list[list[SearchHit]], return_scores: bool = True) -> dict[str, Any]:
    """Search results -> the response body.

    >>> h = [[SearchHit(Passage("1", '"T"\\nx'), 1.5)]]
    >>> hits_to_json(h)
    {'result': [[{'document': {'id': '1', 'contents': '"T"\\nx'}, 'score': 1.5}]]}
    >>> hits_to_json(h, return_scores=False)
    {'result': [[{'id': '1', 'contents': '"T"\\nx'}]]}
    """
    if return_scores:
        return {"result": [[{"document": h.passage.to_dict(), "score": h.score} for h in q] for q in hits]}
    return {"result": [[h.passage.to_dict() for h in q] for q in hits]}


def json_to_hits(body: Any, n_queries: int | None = None) -> list[list[SearchHit]]:
    """A response body (with or without scores) -> search results; bare documents get score 0.

    >>> json_to_hits({"result": [[{"id": 2, "contents": "c"}]]})
    [[SearchHit(passage=Passage(id='2', contents='c'), score=0.0)]]
    """
    if not isinstance(body, dict) or "result" not in body:
        raise ValueError("retrieval response has no 'result' field")
    out: list[list[SearchHit]] = []
    for i, per_query in enumerate(body["result"]):
        if not isinstance(per_query, list):
            raise ValueError(f"result[{i}] must be a list")
        hits = []
        for j, item in enumerate(per_query):
            try:
                if isinstance(item, dict) and "document" in item:
                    sd = ScoredDocument.model_validate(item)
                    hits.append(SearchHit(Passage(sd.document.id, sd.document.contents), sd.score))
                else:
                    d = Document.model_validate(item)
                    hits.append(SearchHit(Passage(d.id, d.contents), 0.0))
            except ValueError as err:
                raise ValueError(f"result[{i}][{j}] is not a document: {err}") from None
        out.append(hits)
    if n_queries is not None and len(out) != n_queries:
        raise ValueError(f"retrieval response has {len(out)} result lists for {n_queries} queries")
    return out
