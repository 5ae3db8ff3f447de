"""Photometric augmentation (paper §3.1: colour jitter + Gaussian blur) and ImageNet normalisation.

Geometric augmentation (the horizontal flip) lives in `data_utils.dataset`, because it must move image,
label and signed distance map together; everything here touches the image only, so it can run on the
device on a whole batch (the fast path: the loader ships uint8 and `BatchAugment` runs after `.to(device)`),
or per sample inside CPU workers (`BatchAugment.augment_one`, used by `SegmentationDataset(augment=...)`).

Per image, with factors drawn uniformly (b ∈ [1-brightness, 1+brightness], c ∈ [1-contrast, 1+contrast],
s ∈ [1-saturation, 1+saturation], h ∈ [-hue, hue] of a full turn), x ∈ [0, 1] RGB, gray(x) = wᵀx with the
ITU-R 601 luma weights w = (0.299, 0.587, 0.114):

    brightness  x ← b·x
    contrast    x ← c·x + (1-c)·mean(gray(x))            (mean over the whole image)
    saturation  x ← s·x + (1-s)·gray(x)
    hue         x ← T⁻¹ R(2πh) T x                       (rotation about the gray axis in YIQ space)
    clamp to [0, 1]; then, with probability blur_prob, a Gaussian blur with σ ~ U[blur_sigma]

All four colour steps are linear in x, so they are composed into ONE 3×3 matrix plus offset per image and
applied in a single pass (one batched matmul and one clamp); no intermediate clamping, unlike torchvision's
ColorJitter, which clamps after each step and applies them in a random order. The YIQ rotation is the
standard linear approximation of an HSV hue shift; it keeps luma and maps gray to gray. The blur is
separable (two 1-D passes of shifted multiply-adds, mirror padding, kernel truncated at 4σ like
scipy.ndimage.gaussian_filter with mode="mirror").

Randomness: every factor is drawn from a CPU `torch.Generator` seeded with the explicit `seed` argument, so
the same (images, seed) gives the same output on any device, and a training loop can make augmentation a
pure function of (run seed, rank, step).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, the Y row of YIQ
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; a float input is taken to be in [0, 1] already."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def normalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of (3, H, W) or (N, 3, H, W) images, uint8 [0, 255] or float [0, 1].

    Returns float32 (x/255 - mean) / std per channel, on the input's device.
    """
    x = to_unit_float(images)
    shape = (3, 1, 1) if x.dim() == 3 else (1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(shape)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(shape)
    return (x - mean) / std


def gaussian_kernels(sigmas: torch.Tensor, truncate: float = 4.0) -> torch.Tensor:
    """1-D Gaussian kernels, one per sigma, zero-padded to a common odd length.

    Args:
        sigmas: (n,) float, > 0.
    Returns:
        (n, 2R+1) float64, rows summing to 1, where R = max_i int(truncate·σ_i + 0.5) (scipy's radius); row i
        is exactly scipy.ndimage's kernel for σ_i, zero outside its own radius.
    """
    sigmas = sigmas.double()
    radii = (truncate * sigmas + 0.5).floor().long()  # int() of a positive number
    radius = int(radii.max()) if len(radii) else 0
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernels = torch.exp(-0.5 * (offsets[None] / sigmas[:, None]) ** 2)
    kernels = kernels * (offsets.abs()[None] <= radii[:, None])
    return kernels / kernels.sum(dim=1, keepdim=True)


def gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma.

    Args:
        images: (n, C, H, W) float; H and W must exceed the kernel radius (mirror padding).
        sigmas: (n,) per-image standard deviation in pixels.
    Returns:
        (n, C, H, W), equal to scipy.ndimage.gaussian_filter(image, (0, σ, σ), mode="mirror", truncate=truncate).
    """
    kernels = gaussian_kernels(sigmas.cpu(), truncate).to(images.device, images.dtype)  # (n, K)
    radius = (kernels.shape[1] - 1) // 2
    if radius == 0:
        return images
    x = _filter_along(images, kernels, dim=3, radius=radius)  # rows
    return _filter_along(x, kernels, dim=2, radius=radius)  # columns


def _filter_along(x: torch.Tensor, kernels: torch.Tensor, dim: int, radius: int) -> torch.Tensor:
    """Correlate (n, C, H, W) with a per-image 1-D kernel (n, 2R+1) along `dim` (2 or 3), mirror padding.

    A loop over the 2R+1 taps of shifted multiply-adds (not over pixels): on CPU this is several times
    faster than a depthwise `conv2d` with a 1×K kernel, and on a GPU each tap is one fused kernel launch.
    """
    n, size = x.shape[0], x.shape[dim]
    pad = (radius, radius, 0, 0) if dim == 3 else (0, 0, radius, radius)
    padded = F.pad(x, pad, mode="reflect")
    out = torch.zeros_like(x)
    for tap in range(kernels.shape[1]):
        out.addcmul_(padded.narrow(dim, tap, size), kernels[:, tap].view(n, 1, 1, 1))
    return out


def colour_matrices(brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor,
                    hue: torch.Tensor) -> torch.Tensor:
    """The per-image 3×3 part of the composed jitter, M = H(h) · S(s) · (c·b).

    Args: (n,) factors each (hue as a fraction of a full turn). Returns (n, 3, 3) float64.
    The offset is (1-c)·b·mean(gray(x))·(1,1,1): S and H both map gray (1,1,1) to itself.
    """
    n = brightness.shape[0]
    luma = torch.tensor(LUMA, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3)
    s = saturation.double()[:, None, None]
    sat = s * eye + (1 - s) * torch.ones(3, 1, dtype=torch.float64) @ luma[None]  # s·I + (1-s)·1wᵀ
    angle = 2 * math.pi * hue.double()
    rot = torch.zeros(n, 3, 3, dtype=torch.float64)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = torch.cos(angle), -torch.sin(angle)
    rot[:, 2, 1], rot[:, 2, 2] = torch.sin(angle), torch.cos(angle)
    hue_mat = _YIQ_TO_RGB @ rot @ _RGB_TO_YIQ
    return hue_mat @ sat * (contrast.double() * brightness.double())[:, None, None]


class BatchAugment:
    """Colour jitter + Gaussian blur + ImageNet normalisation of an image batch on any device.

    Args:
        brightness, contrast, saturation: jitter strength; factor ~ U[max(0, 1-v), 1+v]; 0 disables.
        hue: hue shift ~ U[-hue, hue] in fractions of a full turn (0.05 = ±18°); 0 disables, at most 0.5.
        blur_prob: probability that an image is blurred; 0 disables.
        blur_sigma: (min, max) of σ in pixels, drawn uniformly.

    Example:
        >>> aug = BatchAugment()
        >>> images = batch["image"].to("cuda", non_blocking=True)          # (N, 3, H, W) uint8
        >>> images = aug(images, seed=hash((run_seed, rank, step)) % 2**63)  # (N, 3, H, W) float32, normalised
    """

    def __init__(self, brightness: float = 0.25, contrast: float = 0.25, saturation: float = 0.25,
                 hue: float = 0.05, blur_prob: float = 0.5, blur_sigma: tuple[float, float] = (0.1, 2.0)):
        if min(brightness, contrast, saturation, hue, blur_prob) < 0 or hue > 0.5 or blur_prob > 1:
            raise ValueError("jitter strengths must be >= 0, hue <= 0.5 and blur_prob in [0, 1]")
        if not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur_sigma must be (min, max) with 0 < min <= max, got {blur_sigma}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.blur_prob, self.blur_sigma = blur_prob, (float(blur_sigma[0]), float(blur_sigma[1]))

    def __repr__(self) -> str:
        return (f"BatchAugment(brightness={self.brightness}, contrast={self.contrast}, saturation="
                f"{self.saturation}, hue={self.hue}, blur_prob={self.blur_prob}, blur_sigma={self.blur_sigma})")

    @property
    def jitter_enabled(self) -> bool:
        return max(self.brightness, self.contrast, self.saturation, self.hue) > 0

    def sample_params(self, n: int, seed: int) -> dict[str, torch.Tensor]:
        """The random factors for n images, a pure function of (n, seed); (n,) float64 CPU tensors each."""
        gen = torch.Generator().manual_seed(int(seed))
        u = torch.rand(n, 6, generator=gen, dtype=torch.float64)  # always 6 draws: streams stay aligned

        def factor(col: int, strength: float) -> torch.Tensor:
            low = max(0.0, 1.0 - strength)
            return low + (1.0 + strength - low) * u[:, col]

        return {
            "brightness": factor(0, self.brightness),
            "contrast": factor(1, self.contrast),
            "saturation": factor(2, self.saturation),
            "hue": (2 * u[:, 3] - 1) * self.hue,
            "blur": u[:, 4] < self.blur_prob,
            "sigma": self.blur_sigma[0] + (self.blur_sigma[1] - self.blur_sigma[0]) * u[:, 5],
        }

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """(N, 3, H, W) uint8 [0, 255] or float [0, 1] -> (N, 3, H, W) float32 normalised, same device."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) images, got {tuple(images.shape)}")
        x = to_unit_float(images)
        p = self.sample_params(x.shape[0], seed)
        if self.jitter_enabled:
            matrices = colour_matrices(p["brightness"], p["contrast"], p["saturation"], p["hue"])
            luma = torch.tensor(LUMA, device=x.device, dtype=x.dtype)
            mean_gray = torch.einsum("c,nchw->n", luma, x) / (x.shape[2] * x.shape[3])  # (N,)
            offset = (1 - p["contrast"].to(x.device, x.dtype)) * p["brightness"].to(x.device, x.dtype) * mean_gray
            x = torch.einsum("nij,njhw->nihw", matrices.to(x.device, x.dtype), x)
            x = x.add_(offset[:, None, None, None]).clamp_(0.0, 1.0)
        blur_idx = p["blur"].nonzero().flatten()
        if len(blur_idx):
            idx = blur_idx.to(x.device)
            x = x.index_copy(0, idx, gaussian_blur(x.index_select(0, idx), p["sigma"][blur_idx]))
        return normalize(x)

    def augment_one(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """The per-sample CPU form for DataLoader workers: (3, H, W) uint8 -> (3, H, W) float32 normalised."""
        return self(image[None], seed)[0]
