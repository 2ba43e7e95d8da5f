"""One DG-Net iteration's losses (docs/method.md section 3), with the gradient routing of the paper.

The training loop calls, each iteration, one D step and then one joint G + E_a step:
    def d_step(fakes):                                                   # fakes: cat(x_ab, x_ba), detached
        d_loss, d_logs = discriminator_objective(model, real, fakes)     # ... backward, D's optimiser
    g_loss, g_logs = generator_objective(model, teacher, batch, w, cfg, on_cross=d_step)
`generator_objective` calls `on_cross` as soon as its decoder has made x_ab and x_ba, before anything
uses D: the D step trains on the very images the G step generates (the published code generates
them twice; `generate_cross` does it on its own), and the G step's adversarial term sees the
updated D, as after a separate D step. Nothing before that point depends on D, and D draws no random
numbers, so this is the same iteration as "D step, then G step" and one decode of x_ij cheaper.

Naming: x_ij = G(s_j, a_i) has i's appearance and j's structure; here i, j are the streams a, b,
so x_ab = G(s_b, a_a) and x_ba = G(s_a, a_b). Every pairwise loss is the sum of its a-stream and
b-stream terms, each a batch mean.

Gradient routing, and how it is obtained without copying any network:
- The appearance code given to the decoder is detached (published behaviour: generation losses
  must not pull E_a away from re-ID; E_a learns from the id losses only). So no generation loss
  reaches E_a through a_i.
- E_a applied to generated images for L_id^c and the code/cycle losses is a *frozen view*
  (`dgnet.models.frozen.frozen_call`): E_a's forward on detached parameters and cloned buffers.
  Autograd then differentiates w.r.t. the input image only (the generator gets L_id^c's gradient,
  E_a's weights none, and no weight gradient is even computed), and BatchNorm's running-stat
  updates land in throw-away clones. As the published per-iteration deep copy of E_a: eval mode
  (no dropout) with BatchNorm on the batch's statistics (`train_bn`).
- Structure-code loss (published): the target s_j is detached; with probability
  `structure_reencode_p` (0.5) per iteration the trainable E_s re-encodes the DETACHED x_ij (E_s
  learns, G does not), otherwise a frozen view of E_s encodes x_ij (G learns, E_s does not). The
  cycle decodes from that same recovered structure.
- The primary KL and fine-grained losses see `x_ij.detach()` through the live E_a: they train E_a
  (trunk and heads) and not G.
- The generator's adversarial loss runs D through the same frozen view (detached parameters; D has
  no buffers): cheaper than toggling requires_grad (nothing to restore, exception-safe, no weight
  gradients computed), and D's parameters receive no gradient from the generator step.
- The teacher runs under no_grad in eval mode (`FrozenTeacher`).

Batching (one forward where it gives the same result): E_s, the decoder and D have no batch
statistics (instance/layer norm or none), so E_s(a, b) is one forward, all six decodes of the step
(two self, two positive, two cross) are one decoder forward, and the cycle's two decodes are one.
E_a's BatchNorm and the teacher's do use batch statistics, so, as published, every batch of N is
normalised on its own: E_a sees the clean a, b, pos_a, pos_b (appearance codes), then their
erased copies (id losses), then x_ab and x_ba (the student losses), ten batches of N in that
order, each updating the running statistics: about 29% of the running average at the end of an
iteration comes from generated images (0.19 / (1 - 0.9^10) with BN momentum 0.1). The frozen E_a
and the teacher see x_ab and x_ba (and the teacher their flips) as batches of their own as well.
Each group of such batches is one grouped forward (`dgnet.models.grouped_norm`: per-batch statistics
and running-statistic updates in order, the same result as separate forwards): E_a runs four
forwards (clean, erased, frozen on x_ij, student on x_ij), not ten, and the teacher one, not four.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from dgnet.config import ObjectiveConfig
from dgnet.errors import ConfigError
from dgnet.losses import (
    NonFiniteLossError,
    code_reconstruction_loss,
    cycle_reconstruction_loss,
    fine_grained_id_loss,
    identity_loss,
    image_reconstruction_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    primary_kl_loss,
    r1_penalty,
)
from dgnet.models.dgnet import DGNet
from dgnet.models.frozen import frozen_call
from dgnet.models.grouped_norm import grouped_call
from dgnet.models.teacher import FrozenTeacher
from dgnet.training.schedule import LossWeights


@dataclass(frozen=True)
class DGNetBatch:
    """One iteration's real images, each N x 3 x H x W (normalised), and labels (N,).

    a and b are two streams of people (the published sampler lets a[n] and b[n] share an id by
    chance; `train.sampling: identity` never does); pos_a[n] is another image of a[n]'s
    person, pos_b[n] of b[n]'s. The `*_erased` tensors, all four or none, are the same images with
    random erasing: when given, the id losses on real images use them (four more E_a forwards of N)
    and everything else uses the clean ones; when absent, the id losses use the clean images.
    """

    a: torch.Tensor
    label_a: torch.Tensor
    b: torch.Tensor
    label_b: torch.Tensor
    pos_a: torch.Tensor
    pos_b: torch.Tensor
    a_erased: torch.Tensor | None = None
    b_erased: torch.Tensor | None = None
    pos_a_erased: torch.Tensor | None = None
    pos_b_erased: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.a.shape
        for name in ("b", "pos_a", "pos_b"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"DGNetBatch.{name}: shape {tuple(getattr(self, name).shape)} "
                                 f"!= a's {tuple(shape)}")
        for name in ("label_a", "label_b"):
            if getattr(self, name).shape != (shape[0],):
                raise ValueError(f"DGNetBatch.{name}: expected shape ({shape[0]},), "
                                 f"got {tuple(getattr(self, name).shape)}")
        given = [t for t in (self.a_erased, self.b_erased, self.pos_a_erased, self.pos_b_erased)
                 if t is not None]
        if given and (len(given) != 4 or any(t.shape != shape for t in given)):
            raise ValueError("DGNetBatch: give all four *_erased tensors, each shaped like a, or none")

    @property
    def erased(self) -> tuple[torch.Tensor, ...] | None:
        """(a, b, pos_a, pos_b) with random erasing, or None."""
        return None if self.a_erased is None else (self.a_erased, self.b_erased, self.pos_a_erased,
                                                    self.pos_b_erased)


@torch.no_grad()
def generate_cross(model: DGNet, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cat(x_ab, x_ba) = cat(G(s_b, a_a), G(s_a, a_b)), without grad: the D step's fakes on their own
    (the trainer takes them from the G step's forward instead, `on_cross`).

    E_a runs as a frozen view (each stream's batch normalised on its own, as in
    `generator_objective`), so that this extra forward does not move its BN running statistics.
    """
    structure_a, structure_b = model.structure_encoder(torch.cat([a, b])).chunk(2)
    code_a, code_b = _frozen_per_batch(model.appearance_encoder, torch.cat([a, b])).code.chunk(2)
    return model.decoder(torch.cat([structure_b, structure_a]), torch.cat([code_a, code_b]))


def discriminator_objective(
    model: DGNet, real: torch.Tensor, fake_detached: torch.Tensor, r1_weight: float = 0.01
) -> tuple[torch.Tensor, dict[str, float]]:
    """D's loss, summed over the two streams (real cat(x_a, x_b), fake cat(x_ab, x_ba)), as published:
    per stream, LSGAN (real -> 1, fake -> 0, summed over scales) + the R1 penalty of every scale
    w.r.t. the full-resolution real images, 0.01 * sum_k mean_n ||grad_{x_n} sum D_k(x)_n||^2.

    The fakes are detached here as well, so only D's parameters get gradient. Real and fake go
    through D in separate forwards: the R1 double-backward then spans the real images only.
    """
    adversarial, penalty = real.new_zeros(()), real.new_zeros(())
    for real_stream, fake_stream in zip(real.chunk(2), fake_detached.chunk(2), strict=True):
        real_stream = real_stream.detach().requires_grad_(r1_weight > 0)
        real_outputs = model.discriminator(real_stream)
        fake_outputs = model.discriminator(fake_stream.detach())
        adversarial = adversarial + lsgan_discriminator_loss(real_outputs, fake_outputs)
        if r1_weight > 0:
            penalty = penalty + r1_penalty(real_outputs, real_stream, r1_weight)
    loss = adversarial + penalty
    return loss, _to_floats({"d_adversarial": adversarial, "d_r1": penalty, "d_total": loss})


def _pair(loss_fn: Any, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """loss(a-stream half) + loss(b-stream half) for two tensors stacked a-stream first."""
    first_a, first_b = first.chunk(2)
    second_a, second_b = second.chunk(2)
    return loss_fn(first_a, second_a) + loss_fn(first_b, second_b)


def _frozen_per_batch(module: torch.nn.Module, images: torch.Tensor, parts: int = 2) -> Any:
    """`grouped_call` (each of `parts` batches of `images` normalised on its own, in one forward)
    through the frozen view of `module` (dgnet.models.frozen)."""
    return grouped_call(lambda x: frozen_call(module, x), images, parts, norms_of=module)


def generator_objective(
    model: DGNet,
    teacher: FrozenTeacher | None,
    batch: DGNetBatch,
    weights: LossWeights,
    cfg: ObjectiveConfig | None = None,
    reencode_structure: bool | None = None,
    on_cross: Callable[[torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The joint G + E_a loss of one iteration, and every term's unweighted value (plus "total").

    `on_cross(cat(x_ab, x_ba).detach())` runs right after the cross-identity decode, before D is
    used (the trainer's D step; see the module docstring).

    Terms whose weight is 0 at this iteration and which nothing else needs are not computed (before
    the warm-up: no teacher, no cycle, no E_a on detached fakes) and are absent from the logs.
    `teacher` may be None only while the primary weight is 0. `reencode_structure` picks the
    structure-code branch (see the module docstring); None draws it from torch's global generator
    with probability `cfg.structure_reencode_p` (the trainer seeds it per iteration).
    """
    cfg = cfg if cfg is not None else ObjectiveConfig()
    if teacher is None and weights.primary > 0:
        raise ConfigError(
            "teacher: the primary KL loss has weight > 0 at this iteration but no teacher was given"
        )
    encoder = model.appearance_encoder
    n = batch.a.shape[0]
    labels = torch.cat([batch.label_a, batch.label_b])
    terms: dict[str, tuple[float, torch.Tensor]] = {}  # name -> (weight, unweighted loss)

    # --- Real images through the live E_a, one batch of N at a time: clean (codes), then erased (ids).
    real = torch.cat([batch.a, batch.b, batch.pos_a, batch.pos_b])
    if batch.erased is None:
        id_outputs = grouped_call(encoder, real, 4)
        codes = id_outputs.code.detach()
    else:
        with torch.no_grad():  # the codes are detached anyway; BN still counts these batches
            codes = grouped_call(encoder, real, 4).code
        id_outputs = grouped_call(encoder, torch.cat(batch.erased), 4)
    code_a, code_b, code_pos_a, code_pos_b = codes.chunk(4)
    primary_logits = id_outputs.primary_logits.chunk(2)  # (a, b) | (pos_a, pos_b)
    terms["id"] = (weights.id, _pair(identity_loss, primary_logits[0], labels))
    terms["id_positive"] = (weights.id_positive, _pair(identity_loss, primary_logits[1], labels))
    fine_real_logits = id_outputs.fine_logits[: 2 * n]
    terms["fine_real"] = (weights.fine, _pair(fine_grained_id_loss, fine_real_logits, labels))
    structure_a, structure_b = model.structure_encoder(torch.cat([batch.a, batch.b])).chunk(2)

    # --- All six decodes in one forward: self, positive appearance, cross identity.
    generated = model.decoder(
        torch.cat([structure_a, structure_b, structure_a, structure_b, structure_b, structure_a]),
        torch.cat([code_a, code_b, code_pos_a, code_pos_b, code_a, code_b]),
    )
    self_recon, positive_recon, cross = generated.split(2 * n)  # cross = (x_ab, x_ba)
    if on_cross is not None:
        on_cross(cross.detach())
    originals = torch.cat([batch.a, batch.b])
    terms["recon_image"] = (weights.recon_image, _pair(image_reconstruction_loss, self_recon, originals))
    terms["recon_image_positive"] = (
        weights.recon_image_positive, _pair(image_reconstruction_loss, positive_recon, originals),
    )  # fmt: skip

    # --- Generated images through the frozen E_a: L_id^c (x_ij as i) and the recovered appearance codes.
    recovered = _frozen_per_batch(encoder, cross)
    terms["id_generated"] = (weights.id_generated, _pair(identity_loss, recovered.primary_logits, labels))
    recovered_codes = recovered.code
    if not cfg.appearance_code_loss_grad:
        recovered_codes = recovered_codes.detach()
    own_codes = torch.cat([code_a, code_b])  # x_ab should give back a's code, x_ba b's
    terms["code_appearance"] = (
        weights.code_appearance, _pair(code_reconstruction_loss, recovered_codes, own_codes),
    )  # fmt: skip

    # --- Structure codes of the generated images (target detached); cycle back to the originals.
    if weights.code_structure > 0 or weights.cycle > 0:
        if reencode_structure is None:
            reencode_structure = bool(torch.rand(()) < cfg.structure_reencode_p)
        if reencode_structure:  # E_s learns to re-encode; no gradient into G through this path
            recovered_structure = model.structure_encoder(cross.detach())
        else:  # G learns to keep the structure; E_s is frozen
            recovered_structure = frozen_call(model.structure_encoder, cross)
        donor_structures = torch.cat([structure_b, structure_a]).detach()  # (s(x_ab) ~ s_b, s(x_ba) ~ s_a)
        terms["code_structure"] = (
            weights.code_structure, _pair(code_reconstruction_loss, recovered_structure, donor_structures),
        )  # fmt: skip
        if weights.cycle > 0:
            from_ab, from_ba = recovered_structure.chunk(2)
            code_from_ab, code_from_ba = recovered_codes.chunk(2)
            # x_a's cycle: structure recovered from x_ba, appearance from x_ab; x_b's the other way round.
            cycled = model.decoder(torch.cat([from_ba, from_ab]), torch.cat([code_from_ab, code_from_ba]))
            terms["cycle"] = (weights.cycle, _pair(cycle_reconstruction_loss, cycled, originals))

    # --- Adversarial: D as a frozen view, so the generator step leaves D's parameters without gradient.
    fake_outputs = frozen_call(model.discriminator, cross)
    terms["adversarial"] = (
        weights.adversarial,
        lsgan_generator_loss([o.chunk(2)[0] for o in fake_outputs])
        + lsgan_generator_loss([o.chunk(2)[1] for o in fake_outputs]),
    )

    # --- Discriminative module on detached generated images, one stream at a time: trains E_a, not G.
    if weights.primary > 0 or weights.fine > 0:
        detached = cross.detach()
        student = grouped_call(encoder, detached, 2)
        if weights.primary > 0:
            soft_labels = teacher.soft_labels(detached, flip_average=cfg.teacher_flip_average,
                                              batch_statistics=cfg.teacher_batch_statistics, batches=2)
            terms["primary_kl"] = (weights.primary,
                                   _pair(primary_kl_loss, student.primary_logits, soft_labels))
        if weights.fine > 0:
            # x_ab has b's structure, x_ba a's: the label is the structure provider's.
            structure_labels = torch.cat([batch.label_b, batch.label_a])
            terms["fine_generated"] = (
                weights.fine,
                _pair(fine_grained_id_loss, student.fine_logits, structure_labels),
            )

    total = sum((weight * loss for weight, loss in terms.values() if weight > 0), generated.new_zeros(()))
    if torch.is_grad_enabled() and not total.requires_grad:
        # Only gradient-free terms (e.g. the published appearance-code loss): keep `backward()` valid.
        total = total + 0.0 * generated.sum()
    logs = {name: loss for name, (_, loss) in terms.items()}
    logs["total"] = total
    return total, _to_floats(logs)


def _to_floats(values: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Detached tensors to floats with a single device synchronisation."""
    numbers = torch.stack([value.detach().float().reshape(()) for value in values.values()]).tolist()
    return dict(zip(values, numbers, strict=True))


def check_finite(logs_or_losses: Mapping[str, float | torch.Tensor], iteration: int) -> None:
    """Raise NonFiniteLossError naming the first loss that is NaN or infinite at `iteration`: the
    iteration's number as log.jsonl and the progress bar count it (1 for the first)."""
    for name, value in logs_or_losses.items():
        if isinstance(value, torch.Tensor):
            finite = bool(torch.isfinite(value.detach()).all())
            shown = value.detach().float().flatten()[:4].tolist()
        else:
            finite = math.isfinite(float(value))
            shown = value
        if not finite:
            raise NonFiniteLossError(
                f"loss {name!r} is not finite ({shown}) at iteration {iteration}; "
                f"lower the learning rate or check the input images"
            )
