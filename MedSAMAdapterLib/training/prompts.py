"""Prompt simulation for training, in MODEL space (after ``prepare_slice``).

Prompts are drawn on the slice (row, col) with the evaluation's own functions (``evaluation.clicks``: tight box,
jittered box, distance-transform centre click, largest-error click) and mapped with the slice's
``SliceTransform`` exactly as ``InteractiveSession`` maps a user's prompts (``to_model_xy``, ``box_rc_to_model``),
so training sees the coordinates inference will send.

Mixture (:class:`PromptPolicy`): with ``box_weight`` a box (tight with ``tight_box_fraction``, else every side
moved by up to ``box_jitter`` x the box size), otherwise 1..``max_clicks`` clicks. The first click is at the
interior maximum of the distance transform (``center_click_fraction``) or at a random interior point. Further
clicks are simulated SAM-style (:meth:`PromptSimulator.simulate`): predict without gradient, click the largest
error region (positive in a miss, negative in a false detection), feed the previous mask back as the mask prompt
(the binary mask with the clicks painted in, as ``InteractiveSession`` does), repeat; the caller then runs the
final prediction with gradient. Multimask output is asked for exactly when the session asks for it (a single
click, no box, no mask prompt), and the best-IoU mask is kept.

``edge`` samples (empty target, see ``training.datasets``) are prompted like propagation does: the box of the
neighbouring plane's mask grown by max(2 px, 10 %).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..engine.preprocessing import SliceTransform
from ..engine.prompts import mask_prompt_with_clicks
from ..errors import InputError
from ..evaluation.clicks import first_click, jittered_box, next_click, tight_box
from ..models.peft.text import understood

PROMPT_KINDS = ("box", "jittered_box", "clicks", "edge_box")
EDGE_MARGIN_PX = 2.0  # InteractiveSession's PropagationPolicy defaults
EDGE_MARGIN_FRACTION = 0.1


@dataclass(frozen=True)
class PromptPolicy:
    """How training prompts are drawn (see the module docstring). ``parse("box=0.5,clicks=5")`` for the CLI."""

    box_weight: float = 0.5
    tight_box_fraction: float = 0.25
    box_jitter: float = 0.1
    max_clicks: int = 5
    center_click_fraction: float = 0.5
    mask_prompt: bool = True
    text_fraction: float = 0.0  # prompts that also carry the structure's name; > 0 gives the adapter text prompts
    focus_fraction: float = 0.0  # samples seen through a focus window around the target (engine/focus.py)

    def __post_init__(self) -> None:
        for name in ("box_weight", "tight_box_fraction", "center_click_fraction", "text_fraction", "focus_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"prompt policy {name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.box_jitter < 0.5:
            raise InputError(f"box_jitter must be in [0, 0.5), got {self.box_jitter}")
        if self.max_clicks < 1:
            raise InputError(f"max_clicks must be >= 1, got {self.max_clicks}")

    @classmethod
    def parse(cls, text: str | None) -> "PromptPolicy":
        """``"box=0.5,clicks=5,jitter=0.1,tight=0.25,center=0.5,mask=1,text=0.5,focus=0.3"`` (any subset;
        ``box`` = box weight, ``text`` / ``focus`` = text / focus fraction)."""
        if not text:
            return cls()
        keys = {"box": "box_weight", "clicks": "max_clicks", "jitter": "box_jitter", "tight": "tight_box_fraction",
                "center": "center_click_fraction", "mask": "mask_prompt", "text": "text_fraction",
                "focus": "focus_fraction"}
        values: dict[str, Any] = {}
        for part in str(text).split(","):
            key, _, value = part.strip().partition("=")
            if key not in keys or not value:
                raise InputError(f"prompt policy item {part!r}: use {', '.join(k + '=...' for k in keys)}")
            try:
                number = float(value)
            except ValueError:
                raise InputError(f"prompt policy item {part!r}: {value!r} is not a number") from None
            values[keys[key]] = int(number) if key == "clicks" else bool(number) if key == "mask" else number
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SimulatedPrompt:
    """One sample's prompt: slice-space record + model-space tensors for ``PromptableSam.decode``.

    ``clicks``: (row, col, positive) in click order; ``box_rc``: inclusive (r0, c0, r1, c1) or None;
    ``mask_logits``: (1, 1, L, L) mask prompt made from the previous prediction's mask, or None; ``rounds``: no-grad predictions
    made to place the corrective clicks.
    """

    kind: str
    transform: SliceTransform
    box_rc: tuple[float, float, float, float] | None = None
    clicks: list[tuple[int, int, bool]] = field(default_factory=list)
    target_clicks: int = 0
    mask_logits: torch.Tensor | None = None
    rounds: int = 0
    text: str | None = None

    @property
    def multimask(self) -> bool:
        """As ``InteractiveSession``: one click, no box, no mask prompt -> three masks, best IoU kept."""
        return self.box_rc is None and len(self.clicks) == 1 and self.mask_logits is None

    def model_inputs(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor | None]:
        """Keyword arguments of ``PromptableSam.decode`` (points / labels / box / mask_logits / multimask)."""
        points = labels = box = None
        if self.clicks:
            rc, click_labels = self.click_arrays()
            points = torch.as_tensor(self.transform.to_model_xy(rc), dtype=torch.float32, device=device)[None]
            labels = torch.as_tensor(click_labels, device=device)[None]
        if self.box_rc is not None:
            box = torch.tensor([self.transform.box_rc_to_model(*self.box_rc)], dtype=torch.float32, device=device)
        mask = None if self.mask_logits is None else self.mask_logits.to(device)
        return {"points": points, "labels": labels, "box": box, "mask_logits": mask, "multimask": self.multimask,
                "text": self.text}

    def feed_back(self, mask: np.ndarray) -> None:
        """Make the previous prediction's binary mask, with the clicks so far painted in, the next mask prompt,
        exactly as the session does (``engine.prompts.mask_prompt_with_clicks``)."""
        self.mask_logits = self.transform.mask_to_model_logits(mask_prompt_with_clicks(mask, *self.click_arrays()))

    def click_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The clicks as (N, 2) slice (row, col) float64 and (N,) int64 labels (1 positive, 0 negative)."""
        rc = np.array([[r, c] for r, c, _ in self.clicks], np.float64).reshape(-1, 2)
        return rc, np.array([1 if p else 0 for _, _, p in self.clicks], np.int64)


def random_interior_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """A random pixel of ``mask`` away from its border: among pixels whose distance to the border is at least
    half the maximum (at least 1), uniformly; a user clicks 'inside', rarely on the edge."""
    region = np.asarray(mask) != 0
    if not region.any():
        raise InputError("cannot place a click on an empty region")
    distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    rows, cols = np.nonzero(distance >= max(1.0, 0.5 * float(distance.max())))
    i = int(rng.integers(rows.size))
    return int(rows[i]), int(cols[i])


def grown_box(mask: np.ndarray, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """Propagation's box: tight box of ``mask`` grown by max(2 px, 10 % of its size), clipped to ``shape``."""
    r0, c0, r1, c1 = tight_box(mask)
    gr = max(EDGE_MARGIN_PX, EDGE_MARGIN_FRACTION * (r1 - r0 + 1))
    gc = max(EDGE_MARGIN_PX, EDGE_MARGIN_FRACTION * (c1 - c0 + 1))
    h, w = shape
    return max(0.0, r0 - gr), max(0.0, c0 - gc), min(h - 1.0, r1 + gr), min(w - 1.0, c1 + gc)


class PromptSimulator:
    """Draws prompts for one sample with a given generator (see the module docstring)."""

    def __init__(self, policy: PromptPolicy | None = None) -> None:
        self.policy = policy or PromptPolicy()

    def initial(self, target: np.ndarray, transform: SliceTransform, rng: np.random.Generator,
                prompt_mask: np.ndarray | None = None) -> SimulatedPrompt:
        """The prompt before any corrective click: a box, or the first click (``target_clicks`` planned)."""
        target = np.asarray(target) != 0
        p = self.policy
        if tuple(target.shape) != transform.original_hw:
            raise InputError(f"target shape {target.shape} does not match the slice {transform.original_hw}")
        if not target.any():
            if prompt_mask is None or not np.any(prompt_mask):
                raise InputError("an empty target needs a prompt_mask (edge sample) to be prompted")
            return SimulatedPrompt("edge_box", transform, box_rc=grown_box(prompt_mask, target.shape))
        if rng.random() < p.box_weight:
            if rng.random() < p.tight_box_fraction or p.box_jitter == 0:
                return SimulatedPrompt("box", transform, box_rc=tuple(float(v) for v in tight_box(target)))
            box = jittered_box(target, rng, p.box_jitter)
            return SimulatedPrompt("jittered_box", transform, box_rc=tuple(float(v) for v in box))
        n = int(rng.integers(1, p.max_clicks + 1))
        r, c = first_click(target) if rng.random() < p.center_click_fraction else random_interior_point(target, rng)
        return SimulatedPrompt("clicks", transform, clicks=[(r, c, True)], target_clicks=n)

    @torch.no_grad()
    def refine(self, model: Any, embedding: torch.Tensor, prompt: SimulatedPrompt, target: np.ndarray,
               autocast: Any = None) -> SimulatedPrompt:
        """Add the planned corrective clicks: predict (no grad), click the largest error, feed the mask back.

        ``autocast``: an optional context-manager factory (bf16 on CUDA). A perfect prediction ends early.
        """
        target = np.asarray(target) != 0
        device = embedding.device
        while len(prompt.clicks) < prompt.target_clicks:
            with (autocast() if autocast else contextlib.nullcontext()):
                low_res, iou = model.decode(embedding.detach(), **prompt.model_inputs(device))
            best = int(torch.argmax(iou[0])) if prompt.multimask else 0
            logits = low_res[:, best: best + 1].float()
            pred = prompt.transform.logits_to_slice(logits)[0, 0].cpu().numpy() > 0
            prompt.rounds += 1
            click = next_click(target, pred)
            if click is None:
                prompt.target_clicks = len(prompt.clicks)
                break
            prompt.clicks.append((int(click[0]), int(click[1]), bool(click[2])))
            if self.policy.mask_prompt:
                prompt.feed_back(pred)
        return prompt

    def simulate(self, model: Any, embedding: torch.Tensor, target: np.ndarray, transform: SliceTransform,
                 rng: np.random.Generator, prompt_mask: np.ndarray | None = None,
                 autocast: Any = None, name: str = "") -> SimulatedPrompt:
        """:meth:`initial` then :meth:`refine`: the prompt for the final, with-gradient prediction.

        With ``text_fraction`` that share of prompts also names the structure (``name``, when the model knows it),
        the rest do not, so the adapter keeps working for unnamed segments.
        """
        prompt = self.initial(target, transform, rng, prompt_mask)
        if self.policy.text_fraction > 0 and rng.random() < self.policy.text_fraction:
            prompt.text = name if understood(model, name) else None
        return self.refine(model, embedding, prompt, target, autocast) if prompt.target_clicks > 1 else prompt

