"""The frozen CLIP teacher of docs/method.md#pretraining: Omega = CLIP image embedding of the scene view,
Lambda = CLIP text embedding of the sample's caption.

Frozen means: no parameter requires grad, always eval, every forward under
`torch.inference_mode()` with autocast off, bf16 on CUDA (precision="auto"). Outputs come
back as ordinary float32 tensors (not inference tensors), so the student's loss may save
them for backward. Text embeddings are cached per distinct prompt string (LRU): captions
repeat a lot, and only unseen ones go through the text tower.

The teacher is self-contained so the pretrainer can keep it outside the DeepSpeed engine.
`ImageInput` (how a student view is fed to the image tower) is shared with the teacher trainer
(launch/train_teacher.py); zero-shot classification of any CLIP-like pair of encoders is in zero_shot.py.
"""
import contextlib
import logging
from collections import OrderedDict
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from uniemox.data.transforms import IMAGENET_MEAN, IMAGENET_STD, model_input, to_device
from uniemox.errors import UserError
from uniemox.models import clip_models  # noqa: F401  (this project's open_clip configs, known by name)

log = logging.getLogger(__name__)

PRECISIONS = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16}
INPUT_NORMS = ("imagenet", "clip")


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    size: int
    maxsize: int


def _autograd_safe(t: torch.Tensor) -> torch.Tensor:
    """A float32 copy made outside inference mode: a normal tensor autograd may save."""
    return t.float() if t.dtype != torch.float32 else t.clone()


class ImageInput(nn.Module):
    """What the CLIP image tower is fed from a student view (ImageNet-normalised [B, 3, H, W]):
    input_norm "imagenet" passes it as it is (the release); "clip" re-normalises it to CLIP's
    own mean/std, x_clip = (x * std_in + mean_in - mean_clip) / std_clip, one affine map.
    Then a bicubic resize to the model's image size where the view differs (antialiased when
    shrinking). Shared by the frozen teacher and the teacher trainer, so a teacher is used
    exactly as it was trained."""

    def __init__(self, clip: nn.Module, input_norm: str = "imagenet"):
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise UserError(f"teacher input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        self.input_norm = input_norm
        self.image_size: Tuple[int, int] = tuple(clip.visual.image_size)
        pp = open_clip.get_model_preprocess_cfg(clip)
        mean_in, std_in = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        mean_clip, std_clip = torch.tensor(pp["mean"]), torch.tensor(pp["std"])
        self.register_buffer("scale", (std_in / std_clip).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean_in - mean_clip) / std_clip).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm == "clip":
            x = x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
        if tuple(x.shape[-2:]) != self.image_size:
            down = x.shape[-2] > self.image_size[0] or x.shape[-1] > self.image_size[1]
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False, antialias=down)
        return x

    def extra_repr(self) -> str:
        return f"input_norm={self.input_norm!r}, image_size={self.image_size}"


class CLIPTeacher(nn.Module):
    """Frozen open_clip model; `encode_image` / `encode_text` return [B, embed_dim] float32,
    unnormalised (the distillation losses normalise). ``clip``: the open_clip model ``model_name``
    with its weights (``uniemox.exports.teacher.load_teacher`` builds both from a file or a tag);
    ``source``: where the weights came from, for the log.

    input_norm: "imagenet" feeds the ImageNet-normalised student view as it is (the release);
    "clip" first re-normalises it to CLIP's own mean/std:
        x_clip = (x * std_in + mean_in - mean_clip) / std_clip.
    precision: "auto" is bf16 on CUDA and fp32 elsewhere, re-decided on every .to(device).
    text_cache_size: LRU capacity in prompts (0 disables the cache). Token-tensor input is
    never cached (identical tokens are rare outside the string path, and hashing them costs
    a device sync).
    """

    def __init__(self, clip: nn.Module, model_name: str, source: str = "given", device: Union[str, torch.device] = "cpu",
                 precision: str = "auto", input_norm: str = "imagenet", text_cache_size: int = 65536):
        super().__init__()
        if precision not in PRECISIONS:
            raise UserError(f"teacher precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if input_norm not in INPUT_NORMS:
            raise UserError(f"teacher input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        if int(text_cache_size) < 0:
            raise UserError(f"teacher text_cache_size must be >= 0, got {text_cache_size}")
        self.model_name, self.precision, self.input_norm = model_name, precision, input_norm
        self.text_cache_size = int(text_cache_size)
        self._cache: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self._hits = self._misses = 0

        self.source = source
        clip.requires_grad_(False)
        self.clip = clip.eval()
        self._embed_dim = int(open_clip.get_model_config(model_name)["embed_dim"])
        self.tokenizer = open_clip.get_tokenizer(model_name)

        self.image_input = ImageInput(clip, input_norm)
        self.to(device)
        log.info("CLIP teacher %s: weights %s, %s on %s, input_norm %s, embed_dim %d", model_name,
                 self.source, str(self.dtype).replace("torch.", ""), self.device, input_norm,
                 self.embed_dim)

    # ---- module plumbing: stay frozen, keep the dtype `precision` asks for ----
    def _apply(self, fn, recurse=True):
        self._cache.clear()  # cached rows belong to the old device/dtype
        super()._apply(fn, recurse)
        want = PRECISIONS[self.precision] or (
            torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        if self.dtype != want:  # the teacher's dtype follows `precision`, not .to(dtype)/.half()
            self.clip.to(want)
            self.image_input.float()
        return self

    def train(self, mode: bool = True) -> "CLIPTeacher":
        return super().train(False)  # always eval: a parent's .train() must not wake it

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.clip.logit_scale.dtype

    @property
    def image_size(self) -> Tuple[int, int]:
        return self.image_input.image_size

    @property
    def embed_dim(self) -> int:
        """CLIP embedding width (512 for ViT-B-16); the student's projection width follows it."""
        return self._embed_dim

    @property
    def logit_scale(self) -> float:
        """CLIP's exp(logit_scale); it cancels in the UniEmoX losses."""
        return float(self.clip.logit_scale.detach().float().exp().reshape(-1)[0])

    def extra_repr(self) -> str:
        return (f"model_name={self.model_name!r}, source={self.source!r}, precision={self.precision!r}, "
                f"input_norm={self.input_norm!r}, text_cache_size={self.text_cache_size}")

    # ---- encoders ----
    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        """No autograd record, and the caller's autocast cannot change the teacher's precision."""
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            yield

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images: [B, 3, H, W], ImageNet-normalised, or uint8 views as the readers give them
        (normalised here, on the teacher's device); resized (bicubic) to the model's size if needed."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"teacher images must be [B, 3, H, W], got {tuple(images.shape)}")
        with self._frozen():
            x = self.image_input(model_input(images, self.device, torch.float32))
            out = self.clip.encode_image(x.to(self.dtype))
        return _autograd_safe(out)

    def _encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        with self._frozen():
            out = self.clip.encode_text(to_device(tokens, self.device))
        return _autograd_safe(out)

    def encode_text(self, texts: Union[Sequence[str], torch.Tensor]) -> torch.Tensor:
        """texts: prompt strings (tokenised to the model's context length, cached) or
        int tokens [B, context_length] (not cached). Returns [B, embed_dim] float32."""
        if isinstance(texts, torch.Tensor):
            if texts.ndim != 2 or texts.dtype.is_floating_point:
                raise ValueError(f"teacher text tokens must be an int tensor [B, L], got "
                                 f"{texts.dtype} {tuple(texts.shape)}")
            return self._encode_tokens(texts)
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_text takes a list of prompt strings or a token tensor")
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.embed_dim, device=self.device)
        if self.text_cache_size == 0:
            return self._encode_tokens(self.tokenizer(texts))
        rows: List[Optional[torch.Tensor]] = [None] * len(texts)
        unseen: "OrderedDict[str, List[int]]" = OrderedDict()  # prompt -> its positions
        for i, text in enumerate(texts):
            row = self._cache.get(text)
            if row is None:
                unseen.setdefault(text, []).append(i)
            else:
                self._cache.move_to_end(text)
                rows[i] = row
        # a repeat of an unseen prompt in the same batch is a hit: the tower sees it once
        self._misses += len(unseen)
        self._hits += len(texts) - len(unseen)
        if unseen:
            fresh = self._encode_tokens(self.tokenizer(list(unseen)))
            for (text, positions), row in zip(unseen.items(), fresh):
                row = row.clone()  # own storage, so evicting one prompt frees its memory
                for i in positions:
                    rows[i] = row
                self._cache[text] = row
            while len(self._cache) > self.text_cache_size:
                self._cache.popitem(last=False)
        return torch.stack(rows)

    def cache_info(self) -> CacheInfo:
        """hits: prompts served without the text tower; misses: prompts encoded by it."""
        return CacheInfo(self._hits, self._misses, len(self._cache), self.text_cache_size)

    def clear_text_cache(self) -> None:
        self._cache.clear()
        self._hits = self._misses = 0

    def forward(self, images: torch.Tensor, texts: Union[Sequence[str], torch.Tensor]
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(Omega, Lambda) = (encode_image(images), encode_text(texts))."""
        return self.encode_image(images), self.encode_text(texts)
