"""A dataset from your own file, with a natural client per sample: handwritten digits seen by devices.

scikit-learn's 8x8 digits (offline), as twelve devices would capture them: each device has its own
contrast, brightness and blur, and sees its own mix of digits (a Dirichlet draw over classes). The
device of each training image is its natural client id (`groups`), so `data.partition = "natural"`
gives every client one device, as a cross-device federation has it. The test set is the same fixed
held-out third for every seed.
"""

import numpy as np
from sklearn.datasets import load_digits

DEVICES = 12


def load(seed: int = 0) -> dict:
    """The digits split into train and test, with a device id per training image (the split is fixed;
    `seed` draws only the devices' look and class mix)."""
    bunch = load_digits()
    images = bunch.images.astype("float32") / 16.0
    labels = bunch.target
    held_out = np.arange(len(labels)) % 3 == 0  # fixed: every seed is tested on the same images
    rng = np.random.default_rng(seed)
    mix = rng.dirichlet(np.full(10, 0.5), size=DEVICES)  # each device's share of each digit
    train_labels = labels[~held_out]
    devices = np.array([rng.choice(DEVICES, p=mix[:, y] / mix[:, y].sum()) for y in train_labels])
    contrast = rng.uniform(0.6, 1.4, DEVICES)
    brightness = rng.uniform(-0.2, 0.2, DEVICES)
    train = images[~held_out] * contrast[devices, None, None] + brightness[devices, None, None]
    blurred = rng.random(DEVICES) < 0.5  # half the devices blur: a 3-tap average along the rows
    smooth = (np.roll(train, 1, axis=2) + train + np.roll(train, -1, axis=2)) / 3
    train = np.where(blurred[devices, None, None], smooth, train)
    mean, std = train.mean(), train.std()
    return {
        "train_x": ((train - mean) / std)[:, None],
        "train_y": train_labels,
        "test_x": ((images[held_out] - mean) / std)[:, None],
        "test_y": labels[held_out],
        "num_classes": 10,
        "groups": [f"device-{d:02d}" for d in devices],
    }
