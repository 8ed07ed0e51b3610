"""CLIP zero-shot classification with prompt ensembles, built by open_clip's own
``build_zero_shot_classifier``.

Each class c is the normalised mean of its prompts' normalised text embeddings (CLIP's prompt
ensembling over templates t_1..t_T, e.g. "The overall emotion conveyed is {}."):

    w_c = normalise( (1/T) * sum_k normalise(E_text(t_k(c))) )

and an image x is scored by cos(E_image(x), w_c) (times a logit scale where probabilities are
wanted). One template gives the plain one-prompt classifier. Any text encoder works: the frozen
teacher's, a teacher in training, whatever maps tokens of ``tokenizer`` to embeddings.
"""
from typing import Callable, Dict, Iterable, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from open_clip.zero_shot_classifier import build_zero_shot_classifier

from uniemox.errors import UserError


class _TextTower:
    """What open_clip's builder calls: ``encode_text(tokens, normalize=...)``."""

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor]):
        self.encode = encode

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        out = self.encode(tokens).float()
        return F.normalize(out, dim=-1) if normalize else out


def class_embeddings(encode_text: Callable[[torch.Tensor], torch.Tensor], tokenizer, class_names: Sequence[str],
                     templates: Sequence[str], device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """[C, D] float32 class embeddings w_c (module doc). ``encode_text``: tokens [N, L] -> [N, D];
    ``templates``: format strings with one "{}" for the class name."""
    if not templates:
        raise UserError("zero-shot needs at least one prompt template")
    weights = build_zero_shot_classifier(_TextTower(encode_text), tokenizer, list(class_names), list(templates),
                                         device=device)
    return weights.t().float().contiguous()  # open_clip returns [D, C]


@torch.no_grad()
def zero_shot_accuracy(encode_image: Callable[[torch.Tensor], torch.Tensor], classes: torch.Tensor,
                       batches: Iterable[Dict]) -> Tuple[float, int]:
    """Top-1 of argmax_c cos(image, w_c). ``classes``: ``class_embeddings(...)`` [C, D];
    ``batches``: dicts with "image" [B, 3, H, W] (uint8 views) and "label" [B] (e.g.
    ``build_labeled_loader``). Returns (accuracy, number of images)."""
    correct = total = 0
    for batch in batches:
        image = F.normalize(encode_image(batch["image"]).float(), dim=-1)
        pred = (image @ classes.to(image.device).t()).argmax(dim=-1).cpu()
        correct += int((pred == batch["label"].cpu()).sum())
        total += len(pred)
    if total == 0:
        raise UserError("zero-shot evaluation got no images")
    return correct / total, total
