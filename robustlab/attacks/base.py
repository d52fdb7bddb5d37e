"""GradientAttack: the options of the one gradient loop (:mod:`robustlab.attacks.loop`) turned into its pieces, with
restarts as rows of one batch around it; FGSM, I-FGSM, PGD and MI-FGSM are configurations of it."""

from __future__ import annotations

import contextlib
import functools
import logging
import time

import torch
from torch import Tensor, nn

from robustlab.attacks import options, runtime
from robustlab.attacks.inputs import diverse_inputs
from robustlab.attacks.loop import (
    Call,
    Found,
    GradientTransform,
    InputGradient,
    InputTransform,
    Momentum,
    ProjectedStep,
    Rows,
    Step,
    gradient_loop,
)
from robustlab.attacks.protocol import (
    AttackBase,
    AttackResult,
    check_batch,
    frozen_parameters,
    model_logits,
    untouched,
)
from robustlab.attacks.restarts import best_of_restarts, keyed_starts, pick_rows, stack_rows
from robustlab.criteria import Criterion, check_criterion
from robustlab.errors import RobustlabError
from robustlab.losses import LossFn, get_loss, is_targeted_loss
from robustlab.threat import LOW_PRECISION, ThreatModel

log = logging.getLogger(__name__)


class GradientAttack(AttackBase):
    """Iterative signed/normalised gradient ascent on a per-sample loss, projected onto the threat model.

    Args:
        steps: gradient steps per restart.
        step_size: absolute step size; ``None`` uses ``rel_step_size * eps``.
        loss: a loss name from :mod:`robustlab.losses` or a callable ``(logits, labels) -> (N,)`` (a targeted
            loss, :func:`robustlab.losses.targeted_loss`, takes ``(logits, target, y)`` and serves targeted calls).
        restarts: independent runs; per sample a successful run wins over a failed one, else the highest loss.
        random_start: start from a random point of the eps-ball instead of ``x``.
        l2_start_radius: L2 random starts: ``"ball"`` (uniform in the ball) or ``"uniform"`` (radius eps * U);
            see :meth:`ThreatModel.random_start`.
        momentum: MI-FGSM decay ``mu`` (0 disables momentum).
        diversity_prob: probability of the input-diversity transform per step (0 disables it).
        early_stop: a sample leaves the batch at the first iterate that meets the criterion and the result keeps
            that iterate (any-iterate success: never weaker than the final iterate). The evaluator turns it on;
            off by default, so training's inner maximisation runs every step. Off under EOT (one random pass is no
            verdict).
        criterion: success criterion ``(logits, y, target) -> bool (N,)``; default misclassified (untargeted) or
            top-1 = target (targeted).
        seed: seed of the attack's own ``torch.Generator``; the global RNG is never touched.
        eot_samples: expectation over transformation (Athalye et al. 2018): average the input gradient over this
            many forward passes of a randomised model, each with fresh randomness (the global RNG, which such models
            draw from, is forked around the passes and seeded from the attack's generator).
        keyed_start: draw each sample's random start from a generator keyed by the sample's content and the seed,
            so a sample's start, and thus its result, does not depend on the other samples in the batch (batch size,
            only-robust subsets, nested eps, shards). Evaluation calls only; :meth:`perturb` keeps batch draws.
        memory_format: ``"contiguous"`` (default), ``"channels_last"`` (model and inputs, for the call only) or
            ``"auto"`` (a short timed probe, once per model and input shape; see :mod:`robustlab.attacks.runtime`).
            Opt-in because the probe's choice depends on the machine's load, and the two layouts round differently:
            a resumed run could otherwise pick another layout than the run it continues.
        precision: ``"fp32"``, or ``"bf16"``/``"fp16"`` autocast for the gradient steps (where the device offers
            it), or ``"auto"`` (bf16 where offered and faster). ``x_adv`` is always judged in float32.
        restart_batch: the most rows one batch holds when restarts run as one batch of restarts x samples.

    Each option is a piece of :func:`~robustlab.attacks.loop.gradient_loop` or wraps it: ``diversity_prob`` an input
    transform (:meth:`input_transform`), ``eot_samples`` the passes of the input gradient, ``momentum`` a gradient
    transform (:meth:`gradient_transforms`), ``early_stop`` the stop rule, ``restarts`` the wrapper
    (:func:`~robustlab.attacks.restarts.best_of_restarts`); a subclass plugs in its own by overriding those methods
    or :meth:`step_rule` (APGD). A call's state lives in the loop's objects and the result, not on the attack.

    A call leaves the model as it found it (:func:`~robustlab.attacks.protocol.untouched`): a train-mode model is
    attacked in train mode, and its buffers (BatchNorm statistics) and the caller's RNG state are restored.
    :meth:`perturb`, training's inner maximisation, runs the model as a training step would.
    """

    name = "gradient"
    rel_step_size: float = 0.25
    keep_first_success = False  # without early stopping a row's answer is its last iterate (APGD: its first success)

    def __init__(
        self,
        steps: int = 10,
        step_size: float | None = None,
        loss: str | LossFn = "ce",
        restarts: int = 1,
        random_start: bool = False,
        l2_start_radius: str = "ball",
        momentum: float = 0.0,
        diversity_prob: float = 0.0,
        early_stop: bool = False,
        criterion: Criterion | None = None,
        seed: int = 0,
        eot_samples: int = 1,
        keyed_start: bool = True,
        memory_format: str = "contiguous",
        precision: str = "fp32",
        restart_batch: int = 1024,
    ) -> None:
        self.steps = options.whole("steps", steps)
        self.step_size = None if step_size is None else options.number("step size", step_size, positive=True)
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self.loss_fn = get_loss(loss)
        self.restarts = options.whole("restarts", restarts)
        self.random_start = options.flag("random_start", random_start)
        self.l2_start_radius = options.choice("l2_start_radius", l2_start_radius, ("ball", "uniform"))
        self.momentum = options.number("momentum", momentum, low=0)
        self.diversity_prob = options.number("diversity_prob", diversity_prob, low=0, high=1)
        self.early_stop = options.flag("early_stop", early_stop)
        if criterion is not None:
            check_criterion(criterion)
        self.criterion = criterion
        self.seed = options.seed(seed)
        self.eot_samples = options.whole("eot_samples", eot_samples)
        self.keyed_start = options.flag("keyed_start", keyed_start)
        self.memory_format = runtime.check_memory_format(memory_format)
        self.precision = runtime.check_precision(precision)
        self.restart_batch = options.whole("restart_batch", restart_batch)
        self.runtime: dict[str, str] = {}  # the layout and precision the last call ran with (``auto`` resolved)

    @property
    def per_sample(self) -> bool:
        """Whether a sample's result is independent of the rest of its batch (keyed or no random start, no input
        diversity or EOT draws): what lets nested eps attack only the still-robust samples and stay exact."""
        return (self.keyed_start or not self.random_start) and self.diversity_prob == 0 and self.eot_samples == 1

    def config(self) -> dict:
        """The attack's configuration, for reports."""
        return {
            "attack": self.name,
            "steps": self.steps,
            "step_size": self.step_size,
            "loss": self.loss_name,
            "restarts": self.restarts,
            "random_start": self.random_start,
            "l2_start_radius": self.l2_start_radius,
            "momentum": self.momentum,
            "diversity_prob": self.diversity_prob,
            "early_stop": self.early_stop,
            "criterion": getattr(self.criterion, "name", None),
            "seed": self.seed,
            "eot_samples": self.eot_samples,
            "keyed_start": self.keyed_start,
            "memory_format": self.memory_format,
            "precision": self.precision,
            "restart_batch": self.restart_batch,
        }

    def resolve_step_size(self, threat: ThreatModel) -> float:
        """The absolute step size at this threat model's eps."""
        return float(self.step_size) if self.step_size is not None else self.rel_step_size * threat.eps

    def _setup(self, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None) -> Criterion:
        """Refuse a batch that does not fit; the criterion of this call."""
        criterion = check_batch(x, y, target, threat, self.criterion)
        if target is None and is_targeted_loss(self.loss_fn):
            raise RobustlabError(f"the {self.loss_name} loss is a targeted loss; call the attack with target=...")
        return criterion

    def _loss(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        """The per-sample attack loss: of ``y`` (untargeted), of the target, or of both (a targeted loss)."""
        if target is None:
            return self.loss_fn(logits, y)
        return self.loss_fn(logits, target, y) if is_targeted_loss(self.loss_fn) else self.loss_fn(logits, target)

    def perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> Tensor:
        """Just ``x_adv``, for adversarial training's inner maximisation: one restart, no forward pass at ``x_adv``.

        The model runs as it is, like a training step: a train-mode model's BatchNorm statistics see the
        iterates and its dropout draws from the global RNG (the PGD-AT recipe); a call leaves it untouched.
        """
        if self.restarts != 1:
            raise RobustlabError(
                f"perturb runs one restart, not {self.restarts}: restarts pick per sample by the loss at x_adv; "
                "call the attack for its AttackResult instead"
            )
        criterion = self._setup(x, y, threat, target)
        x = x.detach()
        with frozen_parameters(model):
            call = self._call(model, x, threat, criterion, inside=False)
            with call.runtime.layout(model, x):
                start = call.runtime.inputs(self._start(x, threat, call.generator, keyed=False))
                x_adv = self._run(call, call.runtime.inputs(x), start, y, target)[0]
        return x_adv.contiguous() if x.is_contiguous() else x_adv

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, target: Tensor | None = None
    ) -> AttackResult:
        """Attack ``model`` at ``x`` (true labels ``y``); with ``target`` the attack is targeted."""
        start = time.perf_counter()
        criterion = self._setup(x, y, threat, target)
        x = x.detach()
        with frozen_parameters(model), untouched(model, x.device):
            call = self._call(model, x, threat, criterion)
            with call.runtime.layout(model, x):
                xs = call.runtime.inputs(x)
                sign = 1.0 if target is None else -1.0
                best = best_of_restarts(lambda rows: self._restarts(call, xs, y, target, rows), self.restarts,
                                        x.shape[0], self.restart_batch, sign)  # fmt: skip
        best.x_adv = best.x_adv.contiguous() if x.is_contiguous() else best.x_adv
        best.info = {"time_s": time.perf_counter() - start, **self.config(), "step_size": call.step_size,
                     **call.runtime.to_dict()}  # fmt: skip
        return best

    def _call(
        self, model: nn.Module, x: Tensor, threat: ThreatModel, criterion: Criterion, inside: bool = True
    ) -> Call:
        """What this call fixes: its layout and precision (a probe leaves no trace on the model; recorded in
        ``runtime`` for the reports), step size and a fresh generator from the seed."""
        with contextlib.nullcontext() if inside else untouched(model, x.device):
            run = runtime.resolve(model, x, self.memory_format, self.precision)
        self.runtime = run.to_dict()
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        return Call(model, threat, criterion, self.resolve_step_size(threat), run, generator)

    def _restarts(self, call: Call, x: Tensor, y: Tensor, target: Tensor | None, rows: int) -> AttackResult:
        """``rows`` restarts as one batch of ``rows * N``; per sample a success, else the highest loss, judged by a
        float32 forward pass (reusing the logits early stopping already judged a leaving row by)."""
        sign = -1.0 if target is not None else 1.0
        draws = [self._start(x, call.threat, call.generator, self.keyed_start) for _ in range(rows)]
        starts = call.runtime.inputs(draws[0] if rows == 1 else torch.cat(draws))
        xr, yr = stack_rows(x, rows), stack_rows(y, rows)  # labels may be float features (DeACL)
        tr = stack_rows(target, rows) if target is not None else None
        x_adv, left, hit, hit_logits = self._run(call, xr, starts, yr, tr, x.shape[0] if rows > 1 else None)
        rest = (~left).nonzero().squeeze(1)
        with torch.no_grad():
            parts = [hit_logits, model_logits(call.model, x_adv[rest]) if rest.numel() else None]
        judged = torch.cat([t.float() if t.dtype in LOW_PRECISION else t for t in parts if t is not None])
        logits = judged.new_zeros(xr.shape[0], judged.shape[1])
        logits[torch.cat([hit, rest])] = judged
        dropped = left.clone()
        dropped[hit] = False  # rows that left because another restart of their sample broke
        success = call.criterion(logits, yr, tr) & ~dropped
        loss = torch.where(dropped, -sign * float("inf"), self._loss(logits, yr, tr).to(logits.dtype))
        result = AttackResult(x_adv, success, loss, logits)
        return pick_rows(result, rows, sign) if rows > 1 else result

    def _start(self, x: Tensor, threat: ThreatModel, generator: torch.Generator, keyed: bool) -> Tensor:
        """The first iterate: ``x``, a random point of the ball, or (``keyed``) one drawn per sample from a generator
        seeded by the sample's content and one draw of the attack's generator (so restarts differ)."""
        if not self.random_start:
            return x.clone()
        if not keyed:
            return threat.random_start(x, generator, self.l2_start_radius)
        salt = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device).item())
        return keyed_starts(x, threat, salt, self.l2_start_radius)

    def _run(
        self, call: Call, x: Tensor, x_adv: Tensor, y: Tensor, target: Tensor | None, samples: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """The loop from ``x_adv`` with this attack's pieces: ``(x_adv, left, hit, hit_logits)`` (see ``Found``)."""
        gradient = InputGradient(call, self._loss, self.eot_samples, self.input_transform(call.generator))
        found = Found(x_adv, call, self.early_stop and self.eot_samples == 1, samples, self.keep_first_success)
        rows = Rows(x, y, target)
        return found.result(gradient_loop(x_adv, rows, gradient, self.step_rule(call), found.stop), rows)

    def input_transform(self, generator: torch.Generator) -> InputTransform | None:
        """What each gradient pass sees of the iterate: input diversity when it is on (a plug point)."""
        if self.diversity_prob == 0:
            return None
        return functools.partial(diverse_inputs, prob=self.diversity_prob, generator=generator)

    def gradient_transforms(self) -> tuple[GradientTransform, ...]:
        """What the step sees of the gradient: momentum when it is on (a plug point)."""
        return (Momentum(self.momentum),) if self.momentum else ()

    def step_rule(self, call: Call) -> Step:
        """A projected step of the call's step size on the transformed gradient (APGD: its own rule)."""
        return ProjectedStep(call.threat, call.step_size, self.steps, self.gradient_transforms())
