"""Distillation on a tiny seeded model: one step's loss equals a hand computation of
(1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T) (and the reverse KL), alpha 0 is plain cross-entropy,
and a student that is not smaller than its teacher is refused."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.compress.config import DistillVariant
from lmforge.compress.distill import check_student, distillation_loss, student_dims
from lmforge.errors import CompressError
from lmforge.model.config import SIZES, ModelDims
from lmforge.model.decoder import Decoder

DIMS = ModelDims(vocab_size=40, **SIZES["debug"])
BATCH = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(5))


def seeded(dims, seed) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(dims).eval()


def by_hand(student, teacher, alpha, T, reverse) -> float:
    """Every position's softmaxes written out with math.exp."""
    inputs, targets = BATCH[:, :-1], BATCH[:, 1:]
    with torch.no_grad():
        s_logits, t_logits = student(inputs).double(), teacher(inputs).double()
    ce = kl = 0.0
    n = 0
    for b in range(inputs.shape[0]):
        for t in range(inputs.shape[1]):
            s, q = s_logits[b, t].tolist(), t_logits[b, t].tolist()
            z = sum(math.exp(v) for v in s)
            ce += -(s[targets[b, t]] - math.log(z))
            ps = [math.exp(v / T) for v in s]
            pt = [math.exp(v / T) for v in q]
            ps, pt = [p / sum(ps) for p in ps], [p / sum(pt) for p in pt]
            a, c = (ps, pt) if reverse else (pt, ps)
            kl += sum(x * math.log(x / y) for x, y in zip(a, c))
            n += 1
    return (1 - alpha) * ce / n + alpha * T * T * kl / n


@pytest.mark.parametrize("alpha, T, reverse", [(0.5, 2.0, False), (0.8, 1.0, True), (1.0, 3.0, False)])
def test_a_distillation_step_loss_equals_the_hand_computation(alpha, T, reverse):
    student, teacher = seeded(student_dims(DIMS, DistillVariant(name="s", method="distill")), 1), seeded(DIMS, 2)
    with torch.no_grad():
        loss = distillation_loss(teacher, alpha, T, reverse)(student, BATCH).item()
    assert math.isclose(loss, by_hand(student, teacher, alpha, T, reverse), rel_tol=1e-4, abs_tol=1e-6)  # fp32


def test_alpha_zero_is_cross_entropy():
    student, teacher = seeded(DIMS, 1), seeded(DIMS, 2)
    with torch.no_grad():
        assert math.isclose(distillation_loss(teacher, 0.0, 2.0, False)(student, BATCH).item(),
                            student(BATCH[:, :-1], BATCH[:, 1:]).item(), rel_tol=1e-5)


def test_the_default_student_has_half_the_blocks_and_a_larger_one_is_refused():
    assert student_dims(DIMS, DistillVariant(name="s", method="distill")).n_layers == 1
    wide = DistillVariant(name="s", method="distill", student={"d_model": 128})
    with pytest.raises(CompressError, match=r"^compress.variants\[0\] \(s\): the student \([\d,]+ parameters\) is not "
                                            r"smaller than the teacher \([\d,]+\)$"):
        check_student(DIMS, wide, "compress.variants[0]")
