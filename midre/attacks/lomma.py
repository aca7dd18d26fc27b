"""LOMMA (Nguyen et al., CVPR 2023): "Re-thinking model inversion attacks", on top of GMI or KedMI.

Two changes to the identity loss, prior term unchanged (prior kinds: the base GAN + ``lomma``):

* logit loss with feature regularisation for the target:  -logit_y(x) + lambda_feat * ||f(x) - p_reg||^2,
  where f is the target's penultimate feature and p_reg the mean target feature of public images
  (the squared distance is averaged over feature dimensions, so lambda_feat = 1 is width-independent);
* model augmentation: N augmented models (other architectures distilled from the target on public
  data) add their own logit losses; the logit losses are averaged over the N + 1 models and the
  regulariser is added to that mean, NOT divided with it (as in the Re-thinking_MI release)::

    loss = prior(x) + lambda_iden * ( [ -logit_y(T(x)) + sum_i -logit_y(M_i(x)) ] / (N + 1)
                                      + lambda_feat * mean((f(x) - p_reg)^2) )

Defaults (protocols.md, the release's CelebA config): 2400 iterations, lr 0.02, lambda_iden 100,
lambda_feat 1; GMI's Nesterov-momentum rule for ``lomma_gmi`` and KedMI's distributional Adam for
``lomma_kedmi``, whose samples are clamped to [-1, 1] before G (the release's ``clipz``).  In the
adaptive setting the erased candidate feeds every identity model.
"""
from __future__ import annotations

from ..losses import logit_loss
from .base import register_attack
from .gmi import GMI
from .kedmi import KedMI


class _LommaLoss:
    def identity_loss(self, target, prior, x, ids, eraser):
        lp = prior["lomma"]
        xt = self.to_target(x, eraser)
        logits, feats = target.forward_features(xt)
        loss = logit_loss(logits, ids).mean()
        for m in lp.aug_models:
            loss = loss + logit_loss(m(xt), ids).mean()
        loss = loss / (1 + len(lp.aug_models))
        if self.params["lambda_feat"] > 0 and lp.p_reg is not None:
            loss = loss + self.params["lambda_feat"] * (feats - lp.p_reg).pow(2).mean()
        return loss


class LommaGMI(_LommaLoss, GMI):
    """LOMMA + GMI: logit loss + p_reg feature regulariser + augmented models, GMI's prior and optimiser."""

    name = "lomma_gmi"
    strength = 70
    prior_kinds = ("gan", "lomma")
    defaults = {**GMI.defaults, "iterations": 2400, "lambda_feat": 1.0}
    presets = {"quick": {"iterations": 150, "batch_size": 50}}


class LommaKedMI(_LommaLoss, KedMI):
    """LOMMA + KedMI: logit loss + p_reg feature regulariser + augmented models, KedMI's distribution."""

    name = "lomma_kedmi"
    strength = 90
    prior_kinds = ("kedmi", "lomma")
    defaults = {**KedMI.defaults, "iterations": 2400, "lambda_feat": 1.0, "z_clip": 1.0}
    presets = {"quick": {"iterations": 150, "batch_size": 50}}


register_attack(LommaGMI)
register_attack(LommaKedMI)
