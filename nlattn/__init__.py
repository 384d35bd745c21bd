"""nlattn: fast non-local means and image attention maps on the CPU.

Importing the package compiles nothing: every kernel is compiled lazily on first use (and cached
on disk), or all at once by :func:`nlattn.warmup`.
"""

from nlattn.attention import METHODS, attention, attention_rows
from nlattn.denoise import DENOISE_METHODS, denoise_nl_means, estimate_sigma, nl_means
from nlattn.features import extract_patches, nlm_tokens
from nlattn.io import ImageMeta, ImageReadError, read_image, write_image
from nlattn.patchmatch import KnnField, knn_patchmatch
from nlattn.warmup import warmup

__version__ = "0.1.0"

__all__ = [
    "DENOISE_METHODS",
    "ImageMeta",
    "ImageReadError",
    "KnnField",
    "METHODS",
    "__version__",
    "attention",
    "attention_rows",
    "denoise_nl_means",
    "estimate_sigma",
    "extract_patches",
    "knn_patchmatch",
    "nlm_tokens",
    "nl_means",
    "read_image",
    "warmup",
    "write_image",
]
