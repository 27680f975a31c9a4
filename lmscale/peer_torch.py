"""The PyTorch eager peer of `lmscale bench`: lmscale's Transformer and AdamW step written in plain torch.

Same shape, parameter count and optimizer as `lmscale.model.Transformer` under `lmscale.optim` (pre-norm
RMSNorm, RoPE or learned positions, causal attention, tanh-GELU MLP, tied or untied output layer, AdamW
with decay on matrices only, global-norm clipping), fed the same batches. Imported only when torch is
installed (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmscale.config import Config


class _Block(nn.Module):
    def __init__(self, D: int, N: int, F_: int, eps: float, rope_theta: float | None):
        super().__init__()
        self.N, self.rope_theta = N, rope_theta
        self.attn_norm, self.mlp_norm = nn.RMSNorm(D, eps=eps), nn.RMSNorm(D, eps=eps)
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.out = nn.Linear(D, D, bias=False)
        self.wi, self.wo = nn.Linear(D, F_, bias=False), nn.Linear(F_, D, bias=False)

    def _rope(self, x_BxNxLxH: torch.Tensor) -> torch.Tensor:
        L, H = x_BxNxLxH.shape[2], x_BxNxLxH.shape[3]
        inv_freq = self.rope_theta ** (-torch.arange(0, H, 2, dtype=torch.float32) / H)
        angle_Lxh = torch.arange(L, dtype=torch.float32)[:, None] * inv_freq[None, :]
        sin, cos = angle_Lxh.sin(), angle_Lxh.cos()
        x1, x2 = x_BxNxLxH.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    def forward(self, x_BxLxD: torch.Tensor) -> torch.Tensor:
        B, L, D = x_BxLxD.shape
        qkv = self.qkv(self.attn_norm(x_BxLxD)).view(B, L, 3, self.N, D // self.N).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.rope_theta is not None:
            q, k = self._rope(q), self._rope(k)
        o_BxNxLxH = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x_BxLxD = x_BxLxD + self.out(o_BxNxLxH.transpose(1, 2).reshape(B, L, D))
        return x_BxLxD + self.wo(F.gelu(self.wi(self.mlp_norm(x_BxLxD)), approximate="tanh"))


class TorchTransformer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.model
        if m.mlp != "gelu" or m.pos_emb == "sinusoidal":
            raise ValueError("the torch peer implements the gelu MLP with rope or learned positions")
        D, V = m.d_model, m.vocab_size
        rope = m.rope_theta if m.pos_emb == "rope" else None
        self.embed = nn.Embedding(V, D)
        nn.init.normal_(self.embed.weight, std=D**-0.5)  # lmscale's init: unit-scale tied logits
        self.pos = nn.Parameter(torch.randn(m.seq_len, D) * D**-0.5) if m.pos_emb == "learned" else None
        block = lambda: _Block(D, m.n_heads, m.ff_dim, m.norm_eps, rope)  # noqa: E731
        self.blocks = nn.ModuleList(block() for _ in range(m.n_layers))
        self.final_norm = nn.RMSNorm(D, eps=m.norm_eps)
        self.unembed = None if m.tie_embeddings else nn.Linear(D, V, bias=False)

    def forward(self, tokens_BxL: torch.Tensor) -> torch.Tensor:
        x_BxLxD = self.embed(tokens_BxL)
        if self.pos is not None:
            x_BxLxD = x_BxLxD + self.pos[: tokens_BxL.shape[1]]
        for block in self.blocks:
            x_BxLxD = block(x_BxLxD)
        x_BxLxD = self.final_norm(x_BxLxD)
        return x_BxLxD @ self.embed.weight.T if self.unembed is None else self.unembed(x_BxLxD)


class TorchStep:
    """One AdamW step of the peer per call, on lmscale's batch rows ([B, L+1] int32)."""

    def __init__(self, cfg: Config, device: str = "cpu", dtype: torch.dtype = torch.float32):
        torch.manual_seed(cfg.train.seed)
        self.model = TorchTransformer(cfg).to(device)
        self.device, self.dtype, self.clip = device, dtype, cfg.train.grad_clip
        t = cfg.train
        matrices = [p for p in self.model.parameters() if p.ndim >= 2]
        scales = [p for p in self.model.parameters() if p.ndim < 2]
        groups = [{"params": matrices, "weight_decay": t.weight_decay}, {"params": scales, "weight_decay": 0}]
        fused = device != "cpu"
        self.opt = torch.optim.AdamW(groups, lr=t.lr, betas=(t.b1, t.b2), eps=t.eps, fused=fused)

    def __call__(self, batch_BxL1: np.ndarray) -> float:
        tokens = torch.from_numpy(np.asarray(batch_BxL1, np.int64)).to(self.device)
        with torch.autocast(self.device, self.dtype, enabled=self.dtype != torch.float32):
            logits_BxLxV = self.model(tokens[:, :-1])
            loss = F.cross_entropy(logits_BxLxV.float().flatten(0, 1), tokens[:, 1:].flatten())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        return loss.detach()

    def sync(self, loss) -> float:
        """Wait for the step (a no-op on CPU, where eager torch returns when it is done)."""
        return float(loss)

    def nonembedding_params(self) -> int:
        skip = {id(self.model.embed.weight)} | ({id(self.model.pos)} if self.model.pos is not None else set())
        return sum(p.numel() for p in self.model.parameters() if id(p) not in skip)


def serve(stdin, stdout) -> None:
    """The peer as a worker process of `lmscale bench`: the first line of `stdin` is JSON {config (a
    raw config dict), batches (an .npy file of [n, B, L+1] rows), device, dtype, threads}; after a
    warm-up step it answers {"ready": true}, then each {"steps": k} with {"times": [...]}, k steps'
    seconds. The bench's own process is idle while the peer steps and the peer idle while the bench steps, so
    neither side's threads take cores from the other."""
    import json
    import time

    from lmscale.config import from_dict

    spec = json.loads(stdin.readline())
    torch.set_num_threads(spec["threads"])  # also MKL's: an inherited MKL_NUM_THREADS=1 would halve it
    batches = np.load(spec["batches"])
    step = TorchStep(from_dict(spec["config"]), spec["device"], getattr(torch, spec["dtype"]))
    step.sync(step(batches[0]))
    print(json.dumps({"ready": True}), file=stdout, flush=True)
    n = 1
    for line in stdin:
        times = []
        for _ in range(json.loads(line)["steps"]):
            t0 = time.perf_counter()
            step.sync(step(batches[n % len(batches)]))
            times.append(time.perf_counter() - t0)
            n += 1
        print(json.dumps({"times": times}), file=stdout, flush=True)


def main(argv: list[str]) -> None:
    """`python -m lmscale.peer_torch CONFIG [key=value ...]`: train the peer on the batches `lmscale train`
    would draw, for the config's steps (with the config's constant peak lr), printing the last loss:
    launch-to-exit timings beside `lmscale train` with the same config. `--serve`: see `serve`."""
    if argv == ["--serve"]:
        import sys

        return serve(sys.stdin, sys.stdout)
    from lmscale.config import load
    from lmscale.data.pipeline import make_source

    cfg = load(argv[0], argv[1:])
    step, source = TorchStep(cfg), make_source(cfg, "train")
    for _ in range(cfg.steps):
        loss = step(next(source))
    print(f"peer: {cfg.steps} steps, last loss {step.sync(loss):.4f}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
