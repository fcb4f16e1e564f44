"""Prompting baselines of the s3 paper, each producing only a context for the frozen generator:
`cot` (reasoning, no retrieval), `rewrite` (DeepRetrieval-style single query rewrite), `ircot`
(interleaved retrieval and chain of thought), `search_r1` (the Search-R1 tag protocol) and
`search_o1` (Search-o1's reasoning with search queries and Reason-in-Documents)."""
