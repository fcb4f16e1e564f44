"""The searcher agent: the s3 tag protocol, the episode state machine and the batched rollout."""

from s3_ray.agent.episode import Episode, EpisodeError
from s3_ray.agent.policy import HFPolicy, Policy, PolicyStats, ScriptedPolicy, make_policy
from s3_ray.agent.prompt import MARKER, build_searcher_messages, encode_prompt
from s3_ray.agent.protocol import MALFORMED_REASONS, NUDGE, ParsedTurn, parse_turn, render_information
from s3_ray.agent.rollout import initial_passages, rollout_stats, run_rollout

__all__ = [
    "MALFORMED_REASONS",
    "MARKER",
    "NUDGE",
    "Episode",
    "EpisodeError",
    "HFPolicy",
    "ParsedTurn",
    "Policy",
    "PolicyStats",
    "ScriptedPolicy",
    "build_searcher_messages",
    "encode_prompt",
    "initial_passages",
    "make_policy",
    "parse_turn",
    "render_information",
    "rollout_stats",
    "run_rollout",
]
