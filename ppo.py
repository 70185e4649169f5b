"""
Stage 3 of InstructGPT: fine-tune the SFT policy with PPO against the reward model
(Ouyang et al. 2022, section 3.5), with the pretraining mix ("PPO-ptx") by default.

Each iteration samples one response per prompt for a batch of prompts, scores them with
the frozen reward model, turns the score and a per-token KL penalty to the SFT model into
per-token rewards, estimates advantages with GAE, then takes a few epochs of clipped
PPO steps on shuffled minibatches. A value model, initialised from the reward model,
learns alongside with its own optimiser. The gold labeler scores the same responses for
free, so the log shows reward over-optimisation as it happens (Gao et al. 2022): as the
KL to the reference grows, the RM score keeps rising while the gold score rises, then falls.

Run:
  python ppo.py                               # CPU preset, PPO-ptx, 3-6 min -> out/ppo_ptx.pt
  python ppo.py --ptx_coef=0                  # plain PPO -> out/ppo.pt
  python ppo.py --device=cuda                 # GPU preset: larger batches, more iterations
  python ppo.py --adaptive_kl=true --kl_target=3   # Ziegler et al.'s adaptive beta
  python ppo.py --ptx_coef=0 --gold_reward=true    # reward from the gold labeler, not the RM
                                                   # -> out/ppo_gold.pt: PPO with a perfect RM
It needs out/sft.pt (python sft.py) and out/reward.pt (python reward.py).

Simplified (exercises):
- one response per prompt; the RM score is divided by the RM's own std on the
  demonstrations but not whitened per batch; no entropy bonus;
- constant learning rates (CleanRL anneals them linearly to zero); no early stop of the
  epochs when the approx KL grows too large;
- rollout and update alternate on one device; the four models are full copies (as in
  the paper the value model is its own network; sharing a body would save memory;
  --offload=true keeps the two frozen ones in CPU memory between rollouts);
- responses end only at EOS or at max_new_tokens.
"""
import dataclasses
import os
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from checkpoint import load_checkpoint, save_checkpoint
from common import Logger, check_finite, log_path, parse_config, peak_memory, setup, visiting
from data import world
from data.chat import decode_responses, encode_prompts, row_check
from data.corpus import get_batch, load_corpus
from data.loader import load_description, load_jsonl
from data.tokenizer import get_tokenizer
from model import entropy_from_logits, token_logprobs
from model import response_mask as make_response_mask


@dataclasses.dataclass
class Config:
    data_dir: str = "out/data"       # tokenizer, ppo_prompts.jsonl, pretrain.txt (python -m data.generate)
    sft: str = "out/sft.pt"          # the policy and the frozen reference start here
    reward: str = "out/reward.pt"    # the frozen reward model; the value model starts here too
    gold_reward: bool = False        # optimise the gold labeler's score instead of the RM's: how far
                                     # PPO gets with a perfect reward model (a diagnostic, no paper has one)
    out: str = ""                    # "": out/ppo_ptx.pt if ptx_coef > 0, else out/ppo.pt; _gold added with gold_reward
    device: str = "auto"             # auto: cuda, then mps, then cpu
    seed: int = 1337
    # rollouts
    iters: int = 90                  # PPO iterations: one rollout batch and its update each
    batch_size: int = 64             # prompts (episodes) per rollout
    max_new_tokens: int = 48         # responses that never emit EOS are cut here
    temperature: float = 1.0         # sampling temperature; log-probs use the same one
    no_eos_penalty: float = -1.0     # the score of a response that never ends, whatever the RM says
    # reward = score - beta * KL (InstructGPT eq. 2), advantages by GAE
    beta: float = 0.2                # KL coefficient (the paper: 0.02); see the note below
    adaptive_kl: bool = False        # adapt beta toward kl_target (Ziegler et al. 2019)
    kl_target: float = 6.0           # nats per response
    kl_horizon: int = 10000          # episodes over which beta adapts (Ziegler et al.: 10000)
    gamma: float = 1.0               # discount
    lam: float = 0.95                # GAE lambda
    # PPO update
    update_epochs: int = 2           # passes over each rollout batch (4 is common; 2 fits a CPU)
    minibatch_size: int = 32         # episodes per gradient step
    lr: float = 2e-4                 # policy learning rate (Adam)
    vf_lr: float = 1e-4              # value model learning rate (its own Adam)
    clip_eps: float = 0.2            # PPO ratio clip
    clip_value: float = 0.2          # value predictions are clipped this far from the old ones
    max_grad_norm: float = 1.0
    # PPO-ptx: the pretraining-mix term of InstructGPT eq. 2
    ptx_coef: float = 0.015          # gamma of eq. 2 in our normalisation (see ptx_loss); 0: plain PPO
    ptx_batch_size: int = 8          # pretraining windows per gradient step
    # reporting
    sample_every: int = 10           # print a few samples every this many iterations
    n_samples: int = 3
    save_every: int = 0              # also save every this many iterations (0: at the end only)
    offload: bool = False            # keep the frozen reference and reward models in CPU memory,
                                     # on the GPU only while they score a rollout


# The KL coefficient. The score is in units of the RM's std on the demonstrations. At the
# paper's 0.02, PPO found within a few thousand episodes answers this small RM overrates
# and that no SFT sample would give (a polite refusal, or "Horses eat hay.", to every
# question about diets): the gold score fell while the RM score rose. At 0.1 it still
# answered most diet questions with "Horses eat hay.". At 0.2 the policy stays within
# about 0.7 to 0.85 nats of SFT, where the RM's judgement still holds (tuned on the validation
# prompts; python bestofn.py shows the same limit for best-of-N). An RM whose labelers
# never ranked answers to other prompts (data.collect --n_other=0) needs 0.3: at 0.2 PPO
# answers diet questions with another animal's diet.

# the GPU preset: the GPU models are ~10M parameters; more episodes per update
GPU = dict(iters=200, batch_size=256, minibatch_size=64, update_epochs=4, ptx_batch_size=32)


# -----------------------------------------------------------------------------
# the algorithm's math. Shapes: B episodes, N response tokens. `mask` (B, N) is True on
# response tokens up to and including the first EOS; everything else is ignored.

def masked_mean(x, mask, dim=None):
    """Mean of x over the True entries of mask; x, mask (B, N) -> scalar, or (B,) with dim=1.
    torch.where, not x * mask: a NaN or inf in a masked slot must not leak in."""
    x = torch.where(mask, x, torch.zeros_like(x))
    if dim is None:
        return x.sum() / mask.sum()
    return x.sum(dim) / mask.sum(dim)


def masked_var(x, mask):
    """Variance (1/n, not 1/(n-1)) of x over the True entries of mask: (B, N) -> scalar."""
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask)


def masked_whiten(x, mask, eps=1e-8):
    """Mean 0 and std 1 over the valid tokens of the batch (Huang et al. 2023: whiten the
    advantages); masked entries become 0. (B, N) -> (B, N)."""
    whitened = (x - masked_mean(x, mask)) * torch.rsqrt(masked_var(x, mask) + eps)
    return torch.where(mask, whitened, torch.zeros_like(whitened))


def kl_penalty_rewards(logprobs, ref_logprobs, scores, mask, beta):
    """Per-token rewards, InstructGPT eq. 2 as in Ziegler et al. 2019:
    r_t = -beta * (log pi(y_t) - log pi_ref(y_t)) at every response token, plus the
    episode's score (B,) at its last token. logprobs, ref_logprobs (B, N).
    Returns rewards (B, N) and the per-token KL sample kl (B, N), both 0 where masked."""
    kl = torch.where(mask, logprobs - ref_logprobs, torch.zeros_like(logprobs))
    rewards = -beta * kl
    last = mask.sum(1) - 1                                  # (B,) index of the last response token
    rewards[torch.arange(len(rewards)), last] += scores
    return rewards, kl


def compute_gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16), backwards:
    delta_t = r_t + gamma * V_{t+1} - V_t,  A_t = delta_t + gamma * lam * A_{t+1},
    where V and A are 0 after a response's last token. rewards, values, mask (B, N).
    Returns advantages (B, N) (0 where masked) and returns = advantages + values."""
    B, N = rewards.shape
    maskf = mask.float()
    values = torch.where(mask, values, torch.zeros_like(values))  # V = 0 past the end of an episode
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros(B, device=rewards.device)  # A_{t+1}, (B,)
    for t in reversed(range(N)):
        # alive: 1 where token t+1 is part of the response, 0 where t was the last one
        alive = maskf[:, t + 1] if t + 1 < N else torch.zeros_like(next_advantage)
        next_value = values[:, t + 1] if t + 1 < N else torch.zeros_like(next_advantage)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * alive * next_advantage
        advantages[:, t] = next_advantage
    advantages = advantages * maskf
    return advantages, advantages + values


def policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps=0.2):
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise:
    mean over valid tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)),
    ratio = pi(y_t) / pi_old(y_t). All inputs (B, N).
    Returns (loss, clipfrac: share of tokens whose ratio left [1 - eps, 1 + eps],
    approx_kl: the low-variance estimator mean((ratio - 1) - log ratio) of KL(old || new))."""
    # mask the log-ratio before exp: a masked slot could otherwise overflow to inf,
    # and inf * 0 is NaN in the backward pass
    logratio = torch.where(mask, logprobs - old_logprobs, torch.zeros_like(logprobs))
    ratio = logratio.exp()
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.max(pg_losses, pg_losses_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean(((ratio - 1).abs() > clip_eps).float(), mask)
        approx_kl = masked_mean((ratio - 1) - logratio, mask)
    return loss, clipfrac, approx_kl


def value_loss(values, old_values, returns, mask, clip_value=0.2):
    """Clipped value loss (as in OpenAI baselines and lm-human-preferences): the value
    may move at most clip_value from the rollout's old value before the loss stops pulling.
    0.5 * mean over valid tokens of max((V - R)^2, (V_clipped - R)^2). Inputs (B, N)."""
    values_clipped = old_values + torch.clamp(values - old_values, -clip_value, clip_value)
    losses = torch.max((values - returns) ** 2, (values_clipped - returns) ** 2)
    return 0.5 * masked_mean(losses, mask)


def ptx_loss(logits, targets, ptx_coef):
    """The pretraining-mix term of InstructGPT eq. 2, gamma * E_pretrain[log pi(x)], as a
    loss: ptx_coef * mean next-token cross-entropy on pretraining text. logits (B, T, V),
    targets (B, T).
    The paper's gamma = 27.8 belongs to its own way of summing and averaging the RL and
    pretraining losses, so it does not carry over. Here the PPO loss is a mean over
    response tokens of whitened advantages (std 1) and this is a mean over pretraining
    tokens, so ptx_coef = 1 would weigh a pretraining token like a response token whose
    advantage is one standard deviation. That is far too much here: almost half of this
    world's internet is forum threads in the very chat format of the prompts, with the
    internet's answers (wrong, rude or rambling more often than not), so a pull of the
    same order as the RL signal teaches those answers back. The default 0.015 still takes
    the held-out pretraining loss back to about SFT's, since it first relearns what SFT
    forgot; twice as much made PPO-ptx add made-up facts to summaries more often, and at 0
    the tax goes unchecked. The run ends by printing the held-out pretraining loss before
    and after: compare it with --ptx_coef=0."""
    return ptx_coef * F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


class AdaptiveKLController:
    """Ziegler et al. 2019: move beta so that the KL per response tracks a target.
    beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_episodes / horizon)."""

    def __init__(self, beta, target, horizon):
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl, n_episodes):
        error = float(np.clip(kl / self.target - 1, -0.2, 0.2))
        self.beta *= 1 + error * n_episodes / self.horizon


def reward_model_scores(reward_model, query_response, attention_mask, response_mask):
    """The reward model's score of each episode, (B,): GPT.reward, its head at the last
    response token (the EOS if it ended) plus lm_coef times the response's mean log-prob.
    query_response, attention_mask (B, Tp + N): the left-padded prompts, then the responses;
    response_mask (B, N): True on the response's tokens, through the first EOS. The sampled
    tokens are read as sampled; the reward model learned from the decoded text encoded
    anew, which gives the same tokens for all but a few samples in a thousand."""
    context_len = query_response.size(1) - response_mask.size(1)
    hidden = reward_model.hidden_states(query_response, attention_mask)    # (B, Tp + N, C)
    last = hidden[torch.arange(len(hidden)), context_len + response_mask.sum(1) - 1]  # (B, C)
    is_response = F.pad(response_mask.long(), (context_len, 0))             # (B, Tp + N)
    # position t predicts token t + 1
    return reward_model.reward(last, hidden[:, :-1], query_response[:, 1:], is_response[:, 1:])


def response_logits(model, query_response, attention_mask, context_len, temperature):
    """Logits that predicted each response token, divided by the sampling temperature
    (the distribution the tokens were drawn from). (B, Tp + N) -> (B, N, vocab)."""
    # the head reads only the positions that predict a response token, the prompt's last on
    logits = model(query_response, attention_mask, head_from=context_len - 1)  # (B, N + 1, vocab)
    return logits[:, :-1] / temperature


@torch.no_grad()
def heldout_lm_loss(model, tokens, block_size, n_windows=32):
    """Next-token loss on the first n_windows windows of held-out pretraining text; the same
    text before and after RL, so the difference is the alignment tax in miniature."""
    n = min(n_windows, (len(tokens) - 1) // block_size)
    x = torch.from_numpy(tokens[:n * block_size].astype(np.int64)).view(n, block_size)
    y = torch.from_numpy(tokens[1:n * block_size + 1].astype(np.int64)).view(n, block_size)
    device = next(model.parameters()).device
    return ptx_loss(model(x.to(device)), y.to(device), 1.0).item()


# -----------------------------------------------------------------------------

def main(cfg):
    device, autocast = setup(cfg)
    out = cfg.out or f"out/ppo{'_ptx' if cfg.ptx_coef > 0 else ''}{'_gold' if cfg.gold_reward else ''}.pt"
    enc = get_tokenizer(cfg.data_dir)
    eos = enc.eot_token
    train_tokens, val_tokens = load_corpus(cfg.data_dir, enc)  # for the ptx term and the tax
    has_gold = load_description(cfg.data_dir)["gold_labeler"]  # the world's; a real data set has none
    if cfg.gold_reward and not has_gold:
        raise ValueError("--gold_reward needs the world's gold labeler; this data set has none")

    # four models, all in eval mode: RL has no dropout, so before the first step the
    # new/old ratio is exactly 1 (Huang et al. 2023)
    policy, _ = load_checkpoint(cfg.sft, device, make_cmd="python sft.py", tokenizer=enc.name,
                                kind="language model")
    frozen_device = "cpu" if cfg.offload else device
    ref_policy, _ = load_checkpoint(cfg.sft, frozen_device, make_cmd="python sft.py", tokenizer=enc.name)
    reward_model, rm_ckpt = load_checkpoint(cfg.reward, frozen_device, make_cmd="python reward.py",
                                            tokenizer=enc.name, kind="reward model")
    if not reward_model.config.scalar_head or "score_std" not in rm_ckpt:
        raise ValueError(f"{cfg.reward} is not a reward model with a score_std; make one with: python reward.py")
    # the value model starts as the reward model's body and head (its log-prob term unused)
    value_model, _ = load_checkpoint(cfg.reward, device, tokenizer=enc.name, scalar_head=True)
    fits = row_check(enc, policy.config.block_size, cfg.max_new_tokens, gold=has_gold)
    prompts = [r["prompt"] for r in load_jsonl(os.path.join(cfg.data_dir, "ppo_prompts.jsonl"), "prompts", check=fits)]
    ref_policy.requires_grad_(False)
    reward_model.requires_grad_(False)
    score_std = rm_ckpt["score_std"]  # scores / score_std: the demonstrations score mean 0, std 1
    print(f"policy: {policy.num_params() / 1e6:.2f}M parameters; reward model std {score_std:.3g}")
    policy_opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
    value_opt = torch.optim.Adam(value_model.parameters(), lr=cfg.vf_lr, eps=1e-5)
    kl_ctl = AdaptiveKLController(cfg.beta, cfg.kl_target, cfg.kl_horizon)
    logger = Logger(log_path(out))
    tax_before = heldout_lm_loss(policy, val_tokens, policy.config.block_size)

    history, t_start, gen_tokens, gen_time = [], time.time(), 0, 0.0
    for it in tqdm(range(cfg.iters), desc="ppo", mininterval=5):
        t0 = time.time()
        # 1. rollout: one response per prompt, sampled at temperature T with the KV cache,
        #    everything after the first EOS set to EOS
        batch_prompts = [prompts[i] for i in np.random.randint(len(prompts), size=cfg.batch_size)]
        query, query_mask = encode_prompts(enc, batch_prompts, device)   # (B, Tp), left-padded
        context_len = query.size(1)
        with autocast:
            responses, sample_logprobs = policy.generate(
                query, query_mask, cfg.max_new_tokens, cfg.temperature, eos_id=eos,
                return_logprobs=True)                                     # (B, N) each
        t_gen = time.time() - t0
        gen_time += t_gen
        response_mask = make_response_mask(responses, eos)              # (B, N), True through the first EOS
        query_response = torch.cat([query, responses], 1)                # (B, Tp + N)
        # left padding of the prompt and padding after EOS are both masked out
        attention_mask = torch.cat([query_mask, response_mask.long()], 1)  # (B, Tp + N)
        lengths = response_mask.sum(1)                                   # (B,)
        ended = (responses == eos).any(1)                                # (B,)
        gen_tokens += lengths.sum().item()
        # the gold labeler scores every response: logged always, the reward with --gold_reward
        texts = decode_responses(enc, responses, eos)
        gold = torch.tensor([world.score(p, r) if has_gold else float("nan")
                             for p, r in zip(batch_prompts, texts)], device=device)

        with torch.no_grad(), autocast, visiting(reward_model, device, cfg.offload), \
                visiting(ref_policy, device, cfg.offload):
            # 2. score: the RM's score (reward_model_scores), in units of its std on the
            #    demonstrations. A response that never ended scores no_eos_penalty instead
            #    (Huang et al. 2023): the RM never saw one in training, so its opinion of one
            #    is a guess that PPO would exploit
            scores = reward_model_scores(reward_model, query_response, attention_mask,
                                         response_mask) / score_std                # (B,)
            # --gold_reward: the world's labeler replaces the RM (the RM score is still logged)
            reward_scores = gold if cfg.gold_reward else scores
            penalised = torch.where(ended, reward_scores, torch.full_like(reward_scores, cfg.no_eos_penalty))
            # 3. log-probs under the policy and the reference (same temperature as sampling),
            #    values under the value model: V(prompt, y_<t) is read where y_t is predicted
            logits = response_logits(policy, query_response, attention_mask, context_len, cfg.temperature)
            logprobs = token_logprobs(logits, responses)                 # (B, N)
            ref_logits = response_logits(ref_policy, query_response, attention_mask, context_len, cfg.temperature)
            ref_logprobs = token_logprobs(ref_logits, responses)         # (B, N)
            values = value_model(query_response, attention_mask)[:, context_len - 1:-1]  # (B, N)
            entropy = masked_mean(entropy_from_logits(logits), response_mask)
        # 4. per-token rewards: -beta * KL at each token, the score at the last (InstructGPT eq. 2)
        rewards, kl = kl_penalty_rewards(logprobs, ref_logprobs, penalised, response_mask, kl_ctl.beta)
        check_finite(f"ppo iteration {it}", {"reward model score": scores, "value": values,
                                             "KL to the reference": kl})
        # 5. advantages by GAE (gamma 1, lambda 0.95), returns = A + V, then whiten A
        advantages, returns = compute_gae(rewards, values, response_mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, response_mask)
        kl_per_response = kl.sum(1)                                      # (B,), >= 0 on average
        explained_var = 1 - masked_var(returns - values, response_mask) / masked_var(returns, response_mask)

        # 6. PPO: several epochs over shuffled minibatches of the rollout (CleanRL's b_ / mb_)
        b_inds = np.arange(cfg.batch_size)
        stats = {"pg_loss": [], "vf_loss": [], "clipfrac": [], "approx_kl": [], "ptx": []}
        for epoch in range(cfg.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, cfg.batch_size, cfg.minibatch_size):
                mb_inds = torch.from_numpy(b_inds[start:start + cfg.minibatch_size]).to(device)
                mb_mask = response_mask[mb_inds]
                with autocast:
                    mb_logits = response_logits(policy, query_response[mb_inds], attention_mask[mb_inds],
                                                context_len, cfg.temperature)
                    new_values = value_model(query_response[mb_inds], attention_mask[mb_inds])[:, context_len - 1:-1]
                new_logprobs = token_logprobs(mb_logits, responses[mb_inds])
                pg_loss, clipfrac, approx_kl = policy_loss(new_logprobs, logprobs[mb_inds],
                                                           advantages[mb_inds], mb_mask, cfg.clip_eps)
                vf_loss = value_loss(new_values, values[mb_inds], returns[mb_inds], mb_mask, cfg.clip_value)
                loss = pg_loss
                # 7. PPO-ptx: plus gamma times the LM loss on pretraining text (InstructGPT eq. 2)
                if cfg.ptx_coef > 0:
                    x, y = get_batch(train_tokens, cfg.ptx_batch_size, policy.config.block_size, device)
                    with autocast:
                        ptx = ptx_loss(policy(x, fp32_head=False), y, cfg.ptx_coef)
                    loss = loss + ptx
                    stats["ptx"].append(ptx.item() / cfg.ptx_coef)
                policy_opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                value_opt.zero_grad(set_to_none=True)  # the value model learns on its own
                vf_loss.backward()
                vf_grad_norm = torch.nn.utils.clip_grad_norm_(value_model.parameters(), cfg.max_grad_norm)
                check_finite(f"ppo iteration {it}", {"policy loss": loss, "value loss": vf_loss,
                                                     "policy gradient norm": grad_norm,
                                                     "value gradient norm": vf_grad_norm})
                policy_opt.step()
                value_opt.step()
                for k, v in (("pg_loss", pg_loss), ("vf_loss", vf_loss), ("clipfrac", clipfrac),
                             ("approx_kl", approx_kl)):
                    stats[k].append(v.item())

        mean_kl = kl_per_response.mean().item()
        if cfg.adaptive_kl:
            kl_ctl.update(mean_kl, cfg.batch_size)
        metrics = {"score": scores.mean().item(), "gold": gold.mean().item(),
                   "reward": penalised.mean().item(),  # what PPO maximises: RM or gold, EOS rule
                   "kl": mean_kl,
                   "entropy": entropy.item(),
                   "approx_kl": float(np.mean(stats["approx_kl"])), "clipfrac": float(np.mean(stats["clipfrac"])),
                   "pg_loss": float(np.mean(stats["pg_loss"])), "vf_loss": float(np.mean(stats["vf_loss"])),
                   "explained_var": explained_var.item(), "resp_len": lengths.float().mean().item(),
                   "ended": ended.float().mean().item(),
                   # sampler's log-probs vs the full forward pass: rounding-small unless T is misapplied
                   "lp_gap": masked_mean((sample_logprobs - logprobs).abs(), response_mask).item()}
        if cfg.adaptive_kl:
            metrics["beta"] = kl_ctl.beta
        if stats["ptx"]:
            metrics["ptx_lm_loss"] = float(np.mean(stats["ptx"]))
        metrics["s_per_iter"] = time.time() - t0
        metrics["rollout_tok_s"] = lengths.sum().item() / t_gen
        logger.log(it, **metrics)
        history.append(metrics)

        if cfg.sample_every and it % cfg.sample_every == 0:
            for j in range(min(cfg.n_samples, cfg.batch_size)):
                tqdm.write(f"--- {batch_prompts[j]!r}\n    -> {texts[j]!r}\n    RM {scores[j].item():.2f}"
                           f" | gold {gold[j]:.2f} | KL {kl_per_response[j].item():.2f}")
        if cfg.save_every and (it + 1) % cfg.save_every == 0:
            save_checkpoint(out, policy, dataclasses.asdict(cfg), it + 1, enc.name, beta=kl_ctl.beta)

    save_checkpoint(out, policy, dataclasses.asdict(cfg), cfg.iters, enc.name, beta=kl_ctl.beta)
    tax_after = heldout_lm_loss(policy, val_tokens, policy.config.block_size)
    elapsed = time.time() - t_start
    print(f"saved {out}: {elapsed / cfg.iters:.2f} s per iteration, "
          f"rollout {gen_tokens / gen_time:,.0f} tokens/s")
    print(f"alignment tax: held-out pretraining loss {tax_before:.4f} (SFT) -> {tax_after:.4f}")
    print(peak_memory(device))
    logger.log(cfg.iters, line=False, heldout_lm_loss_sft=tax_before, heldout_lm_loss=tax_after,
               s_per_iter=elapsed / cfg.iters, rollout_tok_s=gen_tokens / gen_time)
    logger.close()
    return history


if __name__ == "__main__":
    main(parse_config(Config, sys.argv[1:], gpu=GPU))
