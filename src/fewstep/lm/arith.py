"""A bundled language model whose answers a program can check: three-digit addition, ``"123+489="`` -> ``"612"``.

The model is a tiny ``LlamaForCausalLM`` over a 13-character vocabulary, trained by
``scripts/train_lm_arith.py`` only until a single sample at temperature 1 is right about half of the
time, so that repeated sampling, voting and verifiers have something to gain (Large Language Monkeys,
arXiv 2407.21787). Two verifiers ship with it:

- ``exact``: the program that adds the two numbers (never wrong);
- ``learned``: a logistic-regression probe on the model's own hidden states and answer log-probabilities
  (``answer_features``), trained on the model's own samples: deliberately imperfect, with its
  false-positive and false-negative rates measured on held-out problems and stored in ``record.json``.

A third probe, ``restart``, reads the same features after the first ``RESTART_AFTER`` = 2 answer tokens
(mid-generation: answers have 3-4 digits) and predicts whether the sample will end correct: the learned
mid-generation restart decision of ``fewstep.lm.scaling`` (Adaptive Inference-Time Compute, arXiv 2410.02725);
``predictor(lm, name)`` wraps a probe for ``scaling.sample_with_restarts``.

Sequences are ``<eos> a + b = answer <eos>``: the end-of-sequence token also starts every prompt.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from fewstep._verify import read_bundled, verify_bundled
from fewstep.lm.models import TransformersLM

DATA = Path(__file__).parent / "data" / "arith"
VOCAB = ("<eos>", *"0123456789+=")
EOS = 0
DIGITS = 3
RESTART_AFTER = 2  # answer tokens the restart probe reads
VERIFIERS = ("exact", "learned")


class CharTokenizer:
    """One token per character of ``0123456789+=``, and ``<eos>`` = 0."""

    eos_token_id = EOS
    vocab_size = len(VOCAB)

    def encode(self, text: str) -> list[int]:
        bad = sorted(set(text) - set(VOCAB[1:]))
        if bad:
            raise ValueError(f"the arithmetic tokenizer knows only the characters 0-9, + and =; got {bad!r}")
        return [VOCAB.index(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(VOCAB[i] for i in ids if i != EOS)


TOKENIZER = CharTokenizer()


def problems(n: int, seed: int) -> list[tuple[int, int]]:
    """``n`` addition problems ``(a, b)`` with three-digit operands (100..999), reproducible from ``seed``."""
    rng = random.Random(seed)
    low, high = 10 ** (DIGITS - 1), 10**DIGITS - 1
    return [(rng.randint(low, high), rng.randint(low, high)) for _ in range(n)]


def prompt_ids(problem: tuple[int, int]) -> list[int]:
    """``<eos> a + b =`` as token ids."""
    a, b = problem
    return [EOS, *TOKENIZER.encode(f"{a}+{b}=")]


def answer(tokens: Sequence[int]) -> str:
    """The answer text of generated tokens: everything before the first ``<eos>``."""
    tokens = list(tokens)
    return TOKENIZER.decode(tokens[: tokens.index(EOS)] if EOS in tokens else tokens)


def parse_prompt(prompt: Sequence[int] | str) -> tuple[int, int]:
    """``(a, b)`` from a prompt's ids or text ``"a+b="``."""
    text = prompt if isinstance(prompt, str) else TOKENIZER.decode(prompt)
    head, plus, tail = text.rstrip("=").partition("+")
    if not plus or not head.isdigit() or not tail.isdigit() or not text.endswith("="):
        raise ValueError(f"an arithmetic prompt must read 'a+b=' with decimal a and b, got {text!r}")
    return int(head), int(tail)


def is_correct(prompt: Sequence[int] | str, completion: Sequence[int] | str) -> bool:
    """The exact verifier: the completion's answer is the decimal sum, without leading zeros."""
    a, b = parse_prompt(prompt)
    text = completion if isinstance(completion, str) else answer(completion)
    return text == str(a + b)


def exact_verifier(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]) -> torch.Tensor:
    """1.0 where the completion is right, else 0.0 (float64, one per row)."""
    return torch.tensor([float(is_correct(p, c)) for p, c in zip(prompts, completions, strict=True)],
                        dtype=torch.float64)


def load_arith() -> TransformersLM:
    """The bundled addition model (``scripts/train_lm_arith.py``), checked against its SHA-256 digests."""
    from transformers import AutoModelForCausalLM

    verify_bundled("lm/data/arith/model/")
    model = AutoModelForCausalLM.from_pretrained(DATA / "model", local_files_only=True, dtype=torch.float32,
                                                 use_safetensors=True)
    return TransformersLM(model)


def record() -> dict[str, Any]:
    """The training record: sizes, steps, CPU time and the measured rates of the learned probes."""
    return json.loads(read_bundled("lm/data/arith/record.json"))


@torch.inference_mode()
def answer_features(lm: TransformersLM, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                    batch: int = 512) -> torch.Tensor:
    """What the probes read, per row (float64): the model's last hidden state (after the final norm) at the
    last token, its mean over the answer's positions, and the sum, minimum and mean of the answer tokens'
    log-probabilities under the model. A completion counts through its first ``<eos>``.

    One forward call per ``batch`` rows, left-padded.
    """
    out = []
    rows = [(list(p), _through_eos(c)) for p, c in zip(prompts, completions, strict=True)]
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        seqs = [p + c for p, c in chunk]
        width = max(map(len, seqs))
        ids = torch.tensor([[EOS] * (width - len(s)) + s for s in seqs])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        res = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
        logp = res.logits[:, :-1].double().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        hidden = res.hidden_states[-1].double()
        for r, (_, c) in enumerate(chunk):
            lp = logp[r, logp.shape[1] - len(c):]
            mean = hidden[r, hidden.shape[1] - len(c) - 1 :].mean(0)
            out.append(torch.cat([hidden[r, -1], mean, torch.stack([lp.sum(), lp.min(), lp.mean()])]))
    return torch.stack(out)


@dataclass(frozen=True)
class Probe:
    """Logistic regression on standardised features: ``sigmoid(w . (x - mean) / std + b)``."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: float

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(((features - self.mean) / self.std) @ self.weight + self.bias)

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.mean": self.mean, f"{name}.std": self.std, f"{name}.weight": self.weight,
                f"{name}.bias": torch.tensor([self.bias], dtype=torch.float64)}


def fit_probe(features: torch.Tensor, labels: torch.Tensor, l2: float = 1e-2, steps: int = 200) -> Probe:
    """Fit a logistic-regression probe by L-BFGS (deterministic on one thread)."""
    mean, std = features.mean(0), features.std(0).clamp(min=1e-6)
    x, y = (features - mean) / std, labels.double()
    w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(x @ w[:-1] + w[-1], y) + l2 * w[:-1].square().sum()
        value.backward()
        return value

    opt.step(loss)
    w = w.detach()
    return Probe(mean, std, w[:-1].clone(), float(w[-1]))


def load_probe(name: str) -> Probe:
    """The bundled probe ``"learned"`` (whole answers) or ``"restart"`` (after ``RESTART_AFTER`` answer tokens)."""
    if name not in ("learned", "restart"):
        raise ValueError(f"probe must be 'learned' or 'restart', got {name!r}")
    from safetensors.torch import load

    tensors = load(read_bundled("lm/data/arith/probes.safetensors"))
    return Probe(tensors[f"{name}.mean"], tensors[f"{name}.std"], tensors[f"{name}.weight"],
                 float(tensors[f"{name}.bias"][0]))


class LearnedVerifier:
    """The deliberately imperfect verifier: the ``learned`` probe on the model's own hidden states.

    ``verifier(prompts, completions)`` returns the probe's probability that each completion is right;
    it counts its forward ``calls`` (one per 512 rows).
    """

    def __init__(self, lm: TransformersLM, probe: Probe | None = None) -> None:
        self.lm, self.probe, self.calls = lm, probe or load_probe("learned"), 0

    def __call__(self, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]) -> torch.Tensor:
        self.calls += -(-len(prompts) // 512)
        return self.probe(answer_features(self.lm, prompts, completions))


def predictor(lm: TransformersLM, probe: str = "restart"):
    """``predictor(sequences)`` for ``scaling.sample_with_restarts``: a bundled probe (``"restart"`` or
    ``"learned"``) on each ``prompt + prefix``, split after its ``=``."""
    p = load_probe(probe)
    equals = VOCAB.index("=")

    def predict(seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        cut = [list(s).index(equals) + 1 for s in seqs]
        return p(answer_features(lm, [s[:c] for s, c in zip(seqs, cut)], [s[c:] for s, c in zip(seqs, cut)]))

    return predict


def _through_eos(tokens: Sequence[int]) -> list[int]:
    tokens = list(tokens)
    return tokens[: tokens.index(EOS) + 1] if EOS in tokens else tokens


def verifier(name: str, lm: TransformersLM | None = None):
    """A verifier by name: ``"exact"`` or ``"learned"`` (which needs the model ``lm``)."""
    if name == "exact":
        return exact_verifier
    if name == "learned":
        if lm is None:
            raise ValueError("the 'learned' verifier reads the arithmetic model's hidden states: pass lm=load_arith()")
        return LearnedVerifier(lm)
    raise ValueError(f"verifier must be one of {', '.join(VERIFIERS)}, got {name!r}")
