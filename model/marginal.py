"""Stage 1: one small VAE per feature with a 1-d Gaussian code z_d.

All D marginal VAEs run as one batched network (GroupedMLP), trained on the
observed entries only, so stage 1 costs one step per batch, not one per feature.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hhvaem.model.likelihoods import ColumnLikelihoods, positive_scale
from hhvaem.model.nets import GroupedMLP
from hhvaem.model.schema import Column


class MarginalVAEs(nn.Module):
    def __init__(self, features: tuple[Column, ...], hidden: int = 32):
        super().__init__()
        self.features = features
        self.likelihood = ColumnLikelihoods(features)
        d = len(features)
        self.encoder = GroupedMLP(d, [self.likelihood.input_width, hidden, hidden, 2])
        self.decoder = GroupedMLP(d, [1, hidden, hidden, self.likelihood.width])

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z_d | x_d) for every feature: means and scales [..., D] from normalised values [..., D]."""
        out = self.encoder(self.likelihood.as_input(x))
        return out[..., 0], positive_scale(out[..., 1])[0]

    def decode(self, z: Tensor) -> Tensor:
        """Codes [..., D] -> raw likelihood parameters [..., D, width]."""
        return self.decoder(z.unsqueeze(-1))

    def loss(self, x: Tensor, mask: Tensor, generator: torch.Generator | None = None, kl_weight: float = 1.0) -> Tensor:
        """Negative ELBO, averaged over each feature's observed entries, summed over features.

        `kl_weight` < 1 early in training (warm-up) keeps a 1-d code from collapsing onto the prior
        before the decoder has learnt to use it (seen on nearly-Gaussian columns). A likelihood may weight its
        column's KL term further (`ColumnLikelihoods.kl_weights`: zero-inflated columns).
        """
        mu, sigma = self.encode(x)
        z = mu + sigma * torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        rec = self.likelihood.log_prob(self.decode(z), x)
        kl = (0.5 * (mu * mu + sigma * sigma - 1.0) - torch.log(sigma)) * self.likelihood.kl_weights.to(mu)
        m = mask.to(x.dtype)
        per_feature = ((kl_weight * kl - rec) * m).sum(0) / m.sum(0).clamp_min(1.0)
        return per_feature.sum()
