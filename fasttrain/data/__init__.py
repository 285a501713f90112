"""fasttrain.data: record/token files and loaders whose batches are gathered and decoded by native
threads, in an order that is a pure function of (seed, epoch, rank, world_size) (exact O(1) resume).

    from fasttrain.data import Loader, Normalize, RandomCrop, RandomHorizontalFlip, write_records
    write_records("train.ftrec", {"image": images_u8_NHWC, "label": labels})
    loader = Loader("train.ftrec", batch_size=256, transforms={
        "image": [RandomCrop(32, padding=4), RandomHorizontalFlip(), Normalize(mean, std, channels_first=True)],
        "label": Widen(torch.int64)})
"""

from fasttrain.data.formats import RecordFile, RecordFormatError, read_tokens, write_records, write_tokens
from fasttrain.data.loader import Loader, TokenLoader
from fasttrain.data.transforms import BatchTransform, Normalize, RandomCrop, RandomHorizontalFlip, Widen, batch_transform

__all__ = [
    "Loader",
    "TokenLoader",
    "RecordFile",
    "RecordFormatError",
    "write_records",
    "write_tokens",
    "read_tokens",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Widen",
    "BatchTransform",
    "batch_transform",
]
