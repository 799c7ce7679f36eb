"""Write Fashion-MNIST as a Hugging Face dataset folder (`save_to_disk`), for `hf_folder.toml`.

A dataset you have as a Hugging Face `Dataset` (or can make one of) works the same way: `save_to_disk`
it, then name the folder with `data.dataset = "hf:<folder>"`. This one reads Fashion-MNIST's IDX
files from where fedlayer finds them offline and writes 12,000 training and 2,000 test images, PIL
images in an `image` column and a `ClassLabel` in `label`.

    python simulations/examples/make_hf_folder.py [FOLDER]   # default: runs/examples/fashion-mnist-hf
"""

import sys
from pathlib import Path

import datasets
from PIL import Image

from fedlayer.data import load_dataset
from fedlayer.data.datasets import IDX_FILES, read_idx

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SIZES = {"train": 12_000, "test": 2_000}


def split(folder: Path, name: str) -> datasets.Dataset:
    """The first SIZES[name] images of one split, as a Hugging Face Dataset."""
    images_stem, labels_stem = IDX_FILES[name]
    found = {stem: next(folder.glob(f"{stem}*")) for stem in (images_stem, labels_stem)}
    images, labels = read_idx(found[images_stem]), read_idx(found[labels_stem])
    count = SIZES[name]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(image) for image in images[:count]], "label": labels[:count].tolist()},
        features=features,
    )


def main() -> None:
    datasets.disable_progress_bars()
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/examples/fashion-mnist-hf")
    folder = Path(load_dataset("fashion-mnist").source)  # where fedlayer found the IDX files
    datasets.DatasetDict({name: split(folder, name) for name in SIZES}).save_to_disk(str(out))
    print(f"wrote {out}: " + ", ".join(f"{n:,} {name} images" for name, n in SIZES.items()))


if __name__ == "__main__":
    main()
