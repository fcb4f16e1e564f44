"""The RL proof's recipe: its data sizes and training settings, on top of the demo's config.

Read by `rl_proof.py` (which runs it) and `proof_headroom.py` (which reads its data back), so
neither imports the other.
"""

PROOF_DATA = ["data.train_limit=200", "data.test_limit=null"]
PROOF_RECIPE = [
    # format warm-up that follows a name of the top document (the move a bridge question needs)
    "train.warmup_steps=24", "train.warmup_batch=4", "train.warmup_lr=1e-4",
    "train.warmup_follow_fraction=0.5", "train.warmup_follow_docs=1",
    # GRPO: 2 questions x 8 samples at T=1.0, full fine-tuning without KL (no reference forward)
    "train.steps=16", "train.questions_per_step=2", "train.group_size=8", "train.lr=2e-5", "train.kl_coef=0",
    "searcher.temperature=1.0", "train.checkpoint_every=2",
    # dense reward: the GenAcc gain plus 0.1 x the gold answer's log-likelihood gain over naive RAG
    "reward.metric=mixed", "reward.logprob_weight=0.1",
]
PROOF_DEFAULTS = PROOF_DATA + PROOF_RECIPE
"""On top of the config (the demo's): the proof's data sizes and its training recipe (docs/training.md)."""
