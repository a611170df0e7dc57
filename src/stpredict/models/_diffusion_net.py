"""The cross-modal diffusion denoiser (Wang et al. 2024): a small conditional U-Net and its gene graph.

Histology and expression conditions have separate encoders plus a shared fusion branch; every block is
modulated by a gated spatial scale-and-shift from each (cross-modal adaptive modulation), the bottleneck and the
first decoder level attend over image features at cell, neighbourhood and tissue scales with a time-dependent
gate (dynamic cross-attention), and the output passes through a learned graph convolution over co-expressed genes.
See :mod:`stpredict.models.diffusion` for the method.

The network is split into ``encode`` (the conditions) and ``denoise`` (one step): what depends only on
the conditions — the modality encoders, each block's modulation maps, the attention tokens' key and value
projections — is computed once per map and reused by every sample and DDIM step (``ddim_sample``); a batch
shares one encoded condition by broadcasting. Training calls ``forward``, which does both.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ._diffusion_sampler import cosine_alphas

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import torch

__all__ = [
    "build_denoiser",
    "coexpression_adjacency",
    "denoising_batches",
    "denoising_loss",
    "pad_to",
    "standardisation",
]


def build_denoiser(n_genes: int, n_img: int, adjacency: np.ndarray, cfg: dict[str, Any]) -> torch.nn.Module:
    """The denoiser for ``n_genes`` genes and ``n_img`` image features, ``cfg["channels"]`` wide."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    C = int(cfg["channels"])
    T_DIM = 4 * C

    def gn(c: int) -> nn.GroupNorm:
        return nn.GroupNorm(min(8, c), c)

    class TimeEmbed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(C, T_DIM), nn.SiLU(), nn.Linear(T_DIM, T_DIM))

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            half = C // 2
            freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
            a = t.float()[:, None] * freqs[None]
            return self.mlp(torch.cat([a.sin(), a.cos()], -1))

    class Encoded:
        """Encoded conditions and, per module and resolution, what that module derives from them (memoised)."""

        def __init__(self, z: tuple[torch.Tensor, ...], scales: list[torch.Tensor]) -> None:
            self.z, self.scales, self._memo = z, scales, {}

        def memo(self, module: nn.Module, size: Any, make: Callable[[], Any]) -> Any:
            key = (id(module), tuple(size))
            if key not in self._memo:
                self._memo[key] = make()
            return self._memo[key]

    class CMAM(nn.Module):
        """Cross-modal adaptive modulation: per-modality and shared spatial scale/shift, gated."""

        def __init__(self, c: int) -> None:
            super().__init__()
            self.norm = gn(c)
            self.img = nn.Conv2d(C, 2 * c, 1)
            self.expr = nn.Conv2d(C, 2 * c, 1)
            self.shared = nn.Conv2d(C, 2 * c, 1)
            self.gate = nn.Linear(T_DIM, 3)
            for m in (self.img, self.expr, self.shared):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

        def forward(self, h, enc, temb):
            def mods():  # the three modulations at h's resolution: constant over diffusion steps
                z_img, z_expr, z_shared = enc.z
                m = [self.img(z_img), self.expr(z_expr), self.shared(z_shared)]  # (b', 2c, H', W') each
                if m[0].shape[-2:] != h.shape[-2:]:
                    m = [F.interpolate(v, size=h.shape[-2:], mode="nearest") for v in m]
                return m

            m = enc.memo(self, h.shape[-2:], mods)
            g = torch.softmax(self.gate(temb), -1)[:, :, None, None, None]  # (b, 3, 1, 1, 1)
            mod = g[:, 0] * m[0] + g[:, 1] * m[1] + g[:, 2] * m[2]
            scale, shift = mod.chunk(2, dim=1)
            return self.norm(h) * (1 + scale) + shift

    class ResBlock(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.mod1 = CMAM(cin)
            self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
            self.t = nn.Linear(T_DIM, cout)
            self.mod2 = CMAM(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
            self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

        def forward(self, x, enc, temb):
            h = self.conv1(F.silu(self.mod1(x, enc, temb)))
            h = h + self.t(temb)[:, :, None, None]
            h = self.conv2(F.silu(self.mod2(h, enc, temb)))
            return h + self.skip(x)

    class DynamicCrossAttention(nn.Module):
        """Each location attends over its cell / neighbourhood / tissue image tokens and slide tokens."""

        def __init__(self, c: int, n_scales: int = 3, n_global: int = 4, heads: int = 4) -> None:
            super().__init__()
            self.heads, self.dh = heads, c // heads
            self.q = nn.Linear(c, c)
            self.kv = nn.Linear(C, 2 * c)
            self.scale_gate = nn.Linear(T_DIM + c, n_scales)
            self.global_tokens = nn.Parameter(torch.zeros(n_global, C))
            self.out = nn.Linear(c, c)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
            self.norm = gn(c)

        def forward(self, h, enc, temb):
            # h: (b, c, H, W); enc.scales: (b', C, H', W') image features (b' = b, or 1 shared by the batch)
            b, c, H, W = h.shape
            nh, dh = self.heads, self.dh
            w_k, w_v = self.kv.weight.chunk(2, 0)
            b_k, b_v = (z.view(nh, dh) for z in self.kv.bias.chunk(2))

            def tokens():  # keys and values of the image and slide tokens: constant over diffusion steps
                toks = torch.stack(
                    [
                        F.interpolate(s, size=(H, W), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
                        for s in enc.scales
                    ],
                    2,
                )  # (b', HW, S, C)
                glob = (
                    torch.stack([s.mean((2, 3)) for s in enc.scales], 1).mean(1, keepdim=True)
                    + self.global_tokens[None]
                ).unsqueeze(1)  # (b', 1, G, C)
                k_glob, v_glob = self.kv(glob).chunk(2, -1)
                sh = lambda z: z.reshape(*z.shape[:-1], nh, dh)  # noqa: E731
                # a local token enters scaled by its gate g: kv(g·x) = g·(W x) + bias, so W x is computed once
                return sh(F.linear(toks, w_k)), sh(F.linear(toks, w_v)), sh(k_glob), sh(v_glob)

            k_loc, v_loc, k_glob, v_glob = enc.memo(self, (H, W), tokens)  # (b', HW|1, S|G, nh, dh)
            q_in = self.norm(h).flatten(2).transpose(1, 2)  # (b, HW, c)
            # scale gate from [time embedding, query]: its two halves of the weight applied separately
            w_t, w_q = self.scale_gate.weight.split([temb.shape[-1], c], 1)
            gate = torch.softmax(
                F.linear(temb, w_t)[:, None] + F.linear(q_in, w_q, self.scale_gate.bias), -1
            )  # (b, HW, S)
            q = self.q(q_in).view(b, H * W, 1, nh, dh) / math.sqrt(dh)
            # scores of the gated local tokens g·k + b_k and of the slide tokens, then softmax over all of them
            s_loc = gate[..., None] * (q * k_loc).sum(-1) + (q * b_k).sum(-1)  # (b, HW, S, nh)
            att = torch.cat([s_loc, (q * k_glob).sum(-1)], 2).softmax(2)  # (b, HW, S+G, nh)
            a_loc, a_glob = att.split([k_loc.shape[2], k_glob.shape[2]], 2)
            o = (
                ((a_loc * gate[..., None])[..., None] * v_loc).sum(2)
                + a_loc.sum(2)[..., None] * b_v
                + (a_glob[..., None] * v_glob).sum(2)
            )  # (b, HW, nh, dh)
            return h + self.out(o.reshape(b, H * W, c)).transpose(1, 2).view(b, c, H, W)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            G = n_genes
            self.temb = TimeEmbed()
            # modality-specific and shared condition encoders (disentangling)
            self.enc_img = nn.Sequential(nn.Conv2d(n_img, C, 1), nn.SiLU(), nn.Conv2d(C, C, 3, padding=1))
            self.enc_expr = nn.Sequential(nn.Conv2d(G + 1, C, 3, padding=1), nn.SiLU(), nn.Conv2d(C, C, 3, padding=1))
            self.enc_shared = nn.Sequential(nn.Conv2d(2 * C, C, 1), nn.SiLU(), nn.Conv2d(C, C, 3, padding=1))
            self.null_img = nn.Parameter(torch.zeros(n_img))
            # image features at three scales for cross-attention (cell, neighbourhood, tissue)
            self.img_scales = nn.ModuleList([nn.Conv2d(n_img, C, 1) for _ in range(3)])
            self.inp = nn.Conv2d(G, C, 3, padding=1)
            self.down1 = ResBlock(C, C)
            self.down2 = ResBlock(C, 2 * C)
            self.mid = ResBlock(2 * C, 2 * C)
            self.attn_mid = DynamicCrossAttention(2 * C)
            self.up2 = ResBlock(4 * C, C)
            self.attn_up = DynamicCrossAttention(C)
            self.up1 = ResBlock(2 * C, C)
            self.out = nn.Conv2d(C, G, 3, padding=1)
            # co-expression graph convolution over genes (adjacency fixed, weights learned)
            self.register_buffer("adj", torch.as_tensor(adjacency, dtype=torch.float32))
            self.gcn_w = nn.Parameter(torch.zeros(G, G))
            self.gcn_gate = nn.Parameter(torch.zeros(G))

        def encode(self, low, img, mask_low, drop_img) -> Encoded:
            """The conditions' features (modality encoders, image scales): what does not change over diffusion steps."""
            # low: (b, G, H, W); img: (b, F, H, W); mask_low: (b, 1, H, W); drop_img: (b,) bool
            img = torch.where(drop_img[:, None, None, None], self.null_img[None, :, None, None].expand_as(img), img)
            z_img = self.enc_img(img)
            z_expr = self.enc_expr(torch.cat([low, mask_low], 1))
            z_sh = self.enc_shared(torch.cat([z_img, z_expr], 1))
            scales = []
            for i, conv in enumerate(self.img_scales):
                s = conv(img)
                k = 3**i
                scales.append(F.avg_pool2d(s, k, stride=1, padding=k // 2, count_include_pad=False) if k > 1 else s)
            return Encoded((z_img, z_expr, z_sh), scales)

        def denoise(self, x, t, enc: Encoded):
            """ε from the noised residual ``x`` (b, G, H, W) at times ``t`` (b,) under encoded conditions.

            ``enc`` may hold one condition shared by the whole batch (its tensors broadcast): sampling encodes the
            map once and reuses it for every sample and step.
            """
            temb = self.temb(t)
            h0 = self.inp(x)
            h1 = self.down1(h0, enc, temb)
            h2 = self.down2(F.avg_pool2d(h1, 2, ceil_mode=True), enc, temb)
            m = self.attn_mid(self.mid(h2, enc, temb), enc, temb)
            u2 = self.up2(torch.cat([m, h2], 1), enc, temb)
            u2 = self.attn_up(F.interpolate(u2, size=h1.shape[-2:], mode="nearest"), enc, temb)
            u1 = self.up1(torch.cat([u2, h1], 1), enc, temb)
            eps = self.out(u1)
            graph = torch.einsum("gk,bkhw->bghw", self.adj * self.gcn_w, eps)
            return eps + torch.tanh(self.gcn_gate)[None, :, None, None] * graph

        def forward(self, x, t, low, img, mask_low, drop_img):  # noqa: PLR0917 - nn.Module calls are positional
            return self.denoise(x, t, self.encode(low, img, mask_low, drop_img))

    return Net()


def coexpression_adjacency(values: np.ndarray, mask: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """Symmetric-normalised |correlation| > threshold graph over genes (with self loops) from a measured map."""
    x = values[:, mask].T  # (n, G)
    G = x.shape[1]
    if x.shape[0] < 3:
        return np.eye(G, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.nan_to_num(np.corrcoef(x.T))
    a = (np.abs(r) > threshold).astype(np.float64) * np.abs(r)
    np.fill_diagonal(a, 1.0)
    d = 1.0 / np.sqrt(a.sum(1))
    return (a * d[:, None] * d[None, :]).astype(np.float32)


def standardisation(pairs: list[dict[str, np.ndarray]], corr_threshold: float) -> dict[str, np.ndarray]:
    """Per-gene and per-feature standardisation of the training pairs, and the co-expression graph.

    ``mu``/``sd``: the measured maps' per-gene mean and sd; ``img_mu``/``img_sd``: the image features'; ``adj``:
    :func:`coexpression_adjacency` of the measured cells; ``rsd``: the sd of the standardised residual of the
    measured map over its coarse condition (the denoiser generates that residual scaled to unit variance per gene).
    """

    def standardise(a: np.ndarray) -> np.ndarray:
        return (a - mu[:, None, None]) / sd[:, None, None]

    allv = np.concatenate([p["high"][:, p["mask"]] for p in pairs], 1)
    mu, sd = allv.mean(1), allv.std(1) + 1e-3
    imgs = np.concatenate([p["img"].reshape(p["img"].shape[0], -1) for p in pairs], 1)
    adj = coexpression_adjacency(
        np.concatenate([p["high"][:, p["mask"]] for p in pairs], 1)[:, None, :],
        np.ones((1, allv.shape[1]), bool),
        corr_threshold,
    )
    res = np.concatenate([(standardise(p["high"]) - standardise(p["low"]))[:, p["mask"]] for p in pairs], 1)
    return {
        "mu": mu, "sd": sd, "img_mu": imgs.mean(1), "img_sd": imgs.std(1) + 1e-6, "adj": adj, "rsd": res.std(1) + 1e-3,
    }  # fmt: skip


def pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad the last two dimensions of ``x`` to ``size`` × ``size``."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    return F.pad(x, (0, size - w, 0, size - h))


def denoising_batches(
    data: list[dict[str, torch.Tensor]],
    *,
    crop: int,
    batch_size: int,
    steps_per_epoch: int,
    timesteps: int,
    p_uncond: float,
    device: torch.device,
) -> Callable[[np.random.Generator], Iterator[tuple[torch.Tensor, ...]]]:
    """An epoch of noised random crops of the training maps, for :func:`~stpredict.models._torch.fit_module`.

    ``data`` holds per slide the target residual ``x0``, its training ``mask``, the coarse condition ``low`` and
    its coverage ``low_mask``, and the image features ``img`` (tensors on ``device``). Each step draws
    ``batch_size`` crops of ``crop`` × ``crop`` cells (zero-padded), a diffusion time per crop (cosine schedule of
    ``timesteps``) and whether its histology condition is dropped (probability ``p_uncond``).
    """
    import torch

    dev = device
    T = timesteps
    abar = torch.as_tensor(cosine_alphas(T), dtype=torch.float32, device=dev)
    bs = batch_size

    def sample_batch(rng):
        xs, ms, ls, lms, ims = [], [], [], [], []
        for _ in range(bs):
            d = data[int(rng.integers(len(data)))]
            H, W = d["mask"].shape
            ch, cw = min(crop, H), min(crop, W)
            r0, c0 = int(rng.integers(H - ch + 1)), int(rng.integers(W - cw + 1))
            sl = (slice(None), slice(r0, r0 + ch), slice(c0, c0 + cw))
            xs.append(pad_to(d["x0"][sl], crop))
            ms.append(pad_to(d["mask"][None, r0 : r0 + ch, c0 : c0 + cw].float(), crop))
            ls.append(pad_to(d["low"][sl], crop))
            lms.append(pad_to(d["low_mask"][sl], crop))
            ims.append(pad_to(d["img"][sl], crop))
        return torch.stack(xs), torch.stack(ms), torch.stack(ls), torch.stack(lms), torch.stack(ims)

    def train_batches(rng):
        for _ in range(steps_per_epoch):
            x0, m, low, lm_, img = sample_batch(rng)
            t = torch.as_tensor(rng.integers(0, T, len(x0)), device=dev)
            noise = torch.randn_like(x0)
            a = abar[t][:, None, None, None]
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            drop = torch.as_tensor(rng.random(len(x0)) < p_uncond, device=dev)
            yield xt, t, low, img, lm_, drop, noise, m

    return train_batches


def denoising_loss(model, xt, t, low, img, lm_, drop, noise, m):  # noqa: PLR0917 - called with a batch tuple by fit_loop
    """ε-prediction MSE over the training cells of each crop."""
    pred = model(xt, t, low, img, lm_, drop)
    return (((pred - noise) ** 2) * m).sum() / (m.sum() * pred.shape[1]).clamp_min(1.0)
