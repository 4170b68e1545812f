"""HyP-Adpt (Med-SA's hyper-prompting adapter) and the adapted two-way decoder block.

Context mechanism (how the prompt reaches the adapter): segment-anything's ``TwoWayAttentionBlock`` only sees
``(queries, keys, query_pe, key_pe)``. :class:`PromptContext` registers a forward pre-hook on the mask decoder's
``transformer``; the transformer's third input is ``cat(output tokens, sparse prompt embeddings)``, so the hook
slices off the ``1 + num_mask_tokens`` output tokens and stores the sparse prompt embeddings (point / box tokens
from the prompt encoder) keyed by the calling thread; a forward hook with ``always_call=True`` drops them
afterwards. Hooks leave the state dict and the decoder code untouched, also catch direct ``predict_masks``
calls, and concurrent inferences in different threads do not see each other's prompts. Padding tokens (the
``not_a_point_embed`` row the prompt encoder appends to point-only prompts; it equals that embedding exactly)
are excluded from pooling.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .adapters import Adapter, factory_kwargs

HYP_NORMS = ("layernorm", "none")
HYP_POOLS = ("mean", "max")


def prompt_token_mask(sparse: Tensor, pad: Tensor | None) -> Tensor:
    """(B, N) True for real prompt tokens of ``sparse`` (B, N, C), False for rows equal to ``pad`` (the prompt
    encoder's not-a-point embedding, appended to point-only prompts)."""
    if pad is None or sparse.shape[1] == 0:
        return torch.ones(sparse.shape[:2], dtype=torch.bool, device=sparse.device)
    return ~(sparse == pad.to(sparse.dtype)).all(-1)


class PromptContext:
    """Per-thread holder of the sparse prompt embeddings of the decoder call in progress."""

    def __init__(self, num_output_tokens: int, pad_embedding: nn.Embedding | None = None) -> None:
        self.num_output_tokens = int(num_output_tokens)
        self.pad_embedding = pad_embedding  # plain attribute: the prompt encoder owns (and saves) it
        self._active: dict[int, tuple[Tensor, Tensor]] = {}

    def attach(self, transformer: nn.Module) -> None:
        """Capture the prompt tokens on every ``transformer`` call (and forget them when it returns)."""
        transformer.register_forward_pre_hook(self._capture, with_kwargs=True)
        transformer.register_forward_hook(self._release, always_call=True)

    def set(self, sparse: Tensor) -> None:
        """Make ``sparse`` (B, N, C) the current thread's prompt; rows equal to the pad embedding are masked."""
        pad = None if self.pad_embedding is None else self.pad_embedding.weight
        self._active[threading.get_ident()] = (sparse, prompt_token_mask(sparse, pad))

    def clear(self) -> None:
        self._active.pop(threading.get_ident(), None)

    @contextlib.contextmanager
    def active(self, sparse: Tensor) -> Iterator[None]:
        """``with ctx.active(sparse): block(...)`` for running adapted blocks outside the mask decoder."""
        self.set(sparse)
        try:
            yield
        finally:
            self.clear()

    def get(self) -> tuple[Tensor, Tensor]:
        """(sparse (B, N, C), keep mask (B, N)) of the running call."""
        try:
            return self._active[threading.get_ident()]
        except KeyError:
            raise RuntimeError("HyP adapter used outside a mask-decoder forward: no prompt embeddings are set "
                               "(call the mask decoder, or wrap the call in PromptContext.active)") from None

    def _capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        tokens = kwargs["point_embedding"] if "point_embedding" in kwargs else args[2]
        self.set(tokens[:, self.num_output_tokens:])

    def _release(self, module: nn.Module, args: tuple, output: object) -> None:
        self.clear()


class HyperPromptAdapter(nn.Module):
    """Tokens -> down (L_in = ``hidden``) -> ``layers`` x [act(Norm(e @ W_prompt))] -> up (zero-init) + residual.

    ``W_prompt`` (B, layers, hidden, hidden) is generated per sample by an MLP from the prompt embedding pooled
    over its non-padding tokens, so the adapter's transform depends on the clicks / box. The generator keeps
    PyTorch's default init (a zero generator together with a zero up projection would receive no gradient);
    identity at init comes from the zero up projection alone.
    """

    def __init__(self, dim: int = 256, hidden: int = 64, prompt_dim: int = 256, layers: int = 1,
                 norm: str = "layernorm", pool: str = "mean", *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if norm not in HYP_NORMS or pool not in HYP_POOLS or layers < 1:
            raise ValueError(f"HyP-Adpt: norm in {HYP_NORMS}, pool in {HYP_POOLS}, layers >= 1; "
                             f"got {norm!r}, {pool!r}, {layers}")
        kw = {"device": device, "dtype": dtype}
        self.hidden, self.layers, self.pool = hidden, layers, pool
        self.down = nn.Linear(dim, hidden, **kw)
        self.generator = nn.Sequential(nn.Linear(prompt_dim, hidden, **kw), nn.ReLU(),
                                       nn.Linear(hidden, layers * hidden * hidden, **kw))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden, **kw) if norm == "layernorm" else nn.Identity()
                                   for _ in range(layers))
        self.act = nn.ReLU()
        self.up = nn.Linear(hidden, dim, **kw)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.context: PromptContext | None = None

    def pool_prompt(self, sparse: Tensor, keep: Tensor) -> Tensor:
        """(B, N, C) prompt tokens + (B, N) keep mask -> (B, C); zeros when a sample has no prompt token."""
        k = keep.unsqueeze(-1).to(sparse.dtype)
        if self.pool == "mean":
            return (sparse * k).sum(1) / k.sum(1).clamp(min=1.0)
        masked = sparse.masked_fill(~keep.unsqueeze(-1), float("-inf"))
        pooled = masked.amax(1) if sparse.shape[1] else sparse.new_zeros(sparse.shape[0], sparse.shape[2])
        return torch.where(torch.isfinite(pooled), pooled, torch.zeros_like(pooled))

    def forward(self, x: Tensor, prompt: Tensor | None = None) -> Tensor:
        """x (B, N, dim); ``prompt`` (B or 1, prompt_dim) pooled embedding, else taken from :attr:`context`."""
        if prompt is None:
            if self.context is None:
                raise RuntimeError("HyP adapter has no prompt context; give `prompt` explicitly")
            prompt = self.pool_prompt(*self.context.get())
        if prompt.shape[0] not in (1, x.shape[0]):
            raise RuntimeError(f"HyP adapter: prompt batch {prompt.shape[0]} does not match tokens {x.shape[0]}")
        weights = self.generator(prompt).view(-1, self.layers, self.hidden, self.hidden)
        h = self.down(x)
        for i, norm in enumerate(self.norms):
            h = self.act(norm(h @ weights[:, i]))
        return x + self.up(h)


def two_way_block_class() -> type[nn.Module]:
    from ..promptable import sam_modeling

    return sam_modeling().transformer.TwoWayAttentionBlock


class AdaptedTwoWayBlock(nn.Module):
    """segment-anything ``TwoWayAttentionBlock`` with Med-SA's three decoder adapters (digest §2.1):

    (1) HyP-Adpt on the tokens after self-attention, before ``norm1``; (2) an adapter parallel to ``mlp``
    scaled by ``mlp_scale``; (3) a skip adapter on the image tokens (keys) after the image->token
    cross-attention residual, before ``norm4``. Submodule names equal the original block's, so base keys stay.
    """

    def __init__(self, block: nn.Module, context: PromptContext, ratio: float = 0.25, mlp_scale: float = 0.5,
                 hyp_hidden: int = 64, hyp_layers: int = 1, hyp_norm: str = "layernorm",
                 hyp_pool: str = "mean") -> None:
        super().__init__()
        for name in ("self_attn", "norm1", "cross_attn_token_to_image", "norm2", "mlp", "norm3", "norm4",
                     "cross_attn_image_to_token"):
            setattr(self, name, getattr(block, name))
        self.skip_first_layer_pe = bool(block.skip_first_layer_pe)
        self.mlp_scale = float(mlp_scale)
        dim, kw = block.norm1.normalized_shape[0], factory_kwargs(block)
        self.peft_hyp = HyperPromptAdapter(dim, hyp_hidden, dim, hyp_layers, hyp_norm, hyp_pool, **kw)
        self.peft_hyp.context = context
        self.peft_mlp = Adapter(dim, ratio, skip=False, **kw)
        self.peft_keys = Adapter(dim, ratio, skip=True, **kw)
        self.train(block.training)

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(self.peft_hyp(queries))

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))

        queries = self.norm3(queries + self.mlp(queries) + self.mlp_scale * self.peft_mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(self.peft_keys(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries)))
        return queries, keys
