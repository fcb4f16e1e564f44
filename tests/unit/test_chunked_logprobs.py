"""Token log-probs and entropy from hidden states in LM-head chunks (`grid_logprobs`): the same
numbers and gradients as full-vocabulary logits, and a peak memory that grows with the chunk, not
with rows x length x vocabulary (measured on CPU, and at the paper's shape under FakeTensorMode)."""

from __future__ import annotations

import copy
import weakref
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from s3_ray.config import TrainConfig
from s3_ray.models import load_causal_lm
from s3_ray.rl.algo.batch import TrainBatch, grid_logprobs, token_logprobs
from s3_ray.rl.algo.update import PolicyUpdater

torch.set_num_threads(1)


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages that ops create while the mode is on and that are still alive;
    `peak` is the most at once. Storages of `known` tensors (the weights) are not counted."""

    def __init__(self, known: Any = ()) -> None:
        super().__init__()
        self.now = self.peak = 0
        self._refs: dict[int, Any] = {id(t.untyped_storage()): None for t in known}

    def _gone(self, key: int, size: int) -> None:
        self._refs.pop(key, None)
        self.now -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = id(st)
            if key in self._refs and (self._refs[key] is None or self._refs[key]() is st):
                continue
            size = st.nbytes()
            self._refs[key] = weakref.ref(st, lambda _r, k=key, s=size: self._gone(k, s))
            self.now += size
            self.peak = max(self.peak, self.now)
        return out


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny-random", for_training=True)


def _padded_batch(tok: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    texts = ["<question>who founded the company?</question> <query>founder</query>",
             "<question>river</question> x",
             "<question>where is the mayor born, and when?</question> <important_info>[1, 2]</important_info>"]
    rows = [tok.encode(t, add_special_tokens=False) for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask, 3


def _full_logits_reference(model: Any, ids: torch.Tensor, mask: torch.Tensor, temperature: float, start: int):
    """The straightforward computation: every logit, then log-softmax, gather and entropy."""
    out = model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
    logits = out.logits[:, start:-1].float() / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, ids[:, start + 1:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy, out.hidden_states[-1][:, start:-1]


def _loss(logp: torch.Tensor, entropy: torch.Tensor, grid_mask: torch.Tensor) -> torch.Tensor:
    return (logp * grid_mask).sum() - 0.3 * (entropy * grid_mask).sum()


def _compare(model: Any, ids: torch.Tensor, mask: torch.Tensor, start: int, temperature: float, chunk: int) -> None:
    grid_mask = mask[:, start + 1:].float()  # padding positions are scored but never trained
    ref_model, new_model = copy.deepcopy(model), copy.deepcopy(model)
    logp, ent, hidden = _full_logits_reference(ref_model, ids, mask, temperature, start)
    _loss(logp, ent, grid_mask).backward()
    out = grid_logprobs(new_model, ids, mask, temperature, start, entropy=True, hidden=True, chunk=chunk)
    _loss(out.logprobs, out.entropy, grid_mask).backward()
    assert out.logprobs.shape == logp.shape == out.entropy.shape
    keep = grid_mask.bool()
    assert torch.allclose(out.logprobs[keep], logp[keep], atol=1e-5)
    assert torch.allclose(out.entropy[keep], ent[keep], atol=1e-5)
    assert torch.allclose(out.hidden, hidden, atol=1e-6)
    got = dict(new_model.named_parameters())
    grads = [(n, p.grad, got[n].grad) for n, p in ref_model.named_parameters() if p.requires_grad]
    assert grads and all(b is not None for _, _, b in grads)
    for name, a, b in grads:
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (name, (a - b).abs().max().item())


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_log_probs_entropy_and_gradients_equal_the_full_logits_path(tiny, temperature, chunk) -> None:
    model = tiny[0]
    ids, mask, start = _padded_batch(tiny[1])
    _compare(model, ids, mask, start, temperature, chunk)
    _compare(model, ids, mask, 0, temperature, chunk)


def test_a_lora_policy_and_its_adapter_off_reference_match_the_full_path(tiny) -> None:
    from s3_ray.rl.model.lora import AdapterOffReference, apply_lora

    torch.manual_seed(0)
    policy = apply_lora(copy.deepcopy(tiny[0]), TrainConfig(lora_rank=2))
    with torch.no_grad():  # a moved adapter, so "adapter off" differs from "on"
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids, mask, start = _padded_batch(tiny[1])
    _compare(policy, ids, mask, start, 0.7, chunk=5)
    with torch.no_grad():
        off = grid_logprobs(AdapterOffReference(policy), ids, mask, 0.7, start, chunk=5).logprobs
        base = _full_logits_reference(tiny[0], ids, mask, 0.7, start)[0]
        on = grid_logprobs(policy, ids, mask, 0.7, start, chunk=5).logprobs
    keep = mask[:, start + 1:].bool()
    assert torch.allclose(off[keep], base[keep], atol=1e-5)
    assert not torch.allclose(on[keep], base[keep], atol=1e-3)


def test_bad_chunk_is_refused(tiny) -> None:
    ids, mask, start = _padded_batch(tiny[1])
    with pytest.raises(ValueError, match="logits_chunk"):
        grid_logprobs(tiny[0], ids, mask, 1.0, start, chunk=0)
    with pytest.raises(ValueError, match="logits_chunk"):
        TrainConfig(logits_chunk=0)


def _wide_vocab_model(vocab: int, hidden: int, length: int, heads: int = 2) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=length,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def test_update_forward_backward_peaks_at_the_chunk_not_at_rows_x_length_x_vocab() -> None:
    """A real CPU forward + backward of the update's policy pass (log-probs and entropy with
    gradients) and a reference pass, on a small-hidden, 32k-vocabulary model: one float32 copy of
    the (rows, length, vocab) logits is 128 MiB; the chunked path never holds one (the
    full-logits path peaked at ~755 MiB here, ~6 copies; the chunked one at ~100 MiB)."""
    torch.manual_seed(0)
    vocab, rows, length = 32768, 2, 512
    model = _wide_vocab_model(vocab, 16, length)
    ids = torch.randint(0, vocab, (rows, length))
    loss_mask = torch.ones(rows, length - 1, dtype=torch.long)
    loss_mask[:, :10] = 0
    mb = TrainBatch(ids, torch.ones_like(ids), loss_mask, torch.zeros(rows), ["a", "b"])
    one_copy = rows * (length - 1) * vocab * 4
    updater = PolicyUpdater(model, None, TrainConfig(micro_batch=rows, share_prefix=False, logits_chunk=128), pad_id=0)
    weights = list(model.parameters())
    with LiveBytes(known=weights) as live:
        logp, entropy, _ = updater._forward(mb, entropy_grad=True)
        ((logp * loss_mask).sum() + entropy.sum()).backward()
    assert live.peak < 0.9 * one_copy, f"policy pass peaked at {live.peak / 2**20:.0f} MiB"
    model.zero_grad(set_to_none=True)
    with LiveBytes(known=weights) as live:
        token_logprobs(model, mb, chunk_size=rows, logits_chunk=128)
    assert live.peak < 0.5 * one_copy, f"reference pass peaked at {live.peak / 2**20:.0f} MiB"


def test_at_the_paper_shape_the_chunked_pass_stays_far_below_one_logits_copy() -> None:
    """Qwen2.5-7B's vocabulary, the paper config's micro-batch of 15 rows and ~4k response tokens,
    under FakeTensorMode (nothing is allocated), with a small hidden size so that what is measured
    is the scoring, not the model body: one fp32 copy of the response logits is 34.8 GiB. The
    full-logits computation holds several at once; the chunked forward + backward (1024-token
    chunks) peaks at a few (1024, vocab) tensors (measured: 4.8 GiB, 1 GiB of it the attention mask)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import Qwen2Config, Qwen2ForCausalLM

    vocab, hidden, rows, prompt, response = 152064, 64, 15, 8, 4096
    one_copy = rows * response * vocab * 4
    with FakeTensorMode():
        config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=128, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=prompt + response, tie_word_embeddings=False)
        model = Qwen2ForCausalLM(config)
        ids = torch.randint(0, vocab, (rows, prompt + response))
        mask = torch.ones_like(ids)
        with LiveBytes(known=list(model.parameters())) as chunked:
            out = grid_logprobs(model, ids, mask, 1.0, prompt - 1, entropy=True, chunk=1024)
            (out.logprobs.sum() + out.entropy.sum()).backward()
        model.zero_grad(set_to_none=True)
        with LiveBytes(known=list(model.parameters())) as full:
            logp, entropy, _ = _full_logits_reference(model, ids, mask, 1.0, prompt - 1)
            (logp.sum() + entropy.sum()).backward()
    assert full.peak > 2 * one_copy  # the bound below is one the old way of scoring never met
    assert chunked.peak < 0.25 * one_copy, f"chunked pass peaked at {chunked.peak / 2**30:.1f} GiB"
