import torch

from cnnpipe.core import params
from cnnpipe.train.augment import augment


def test_augment_with_zero_bounds_is_the_identity_and_otherwise_moves_pixels():
    x = torch.randn(6, 3, 32, 32)
    still = params.parse(
        {"train": {"augment": True, "max_shift": 0, "max_rotation": 0, "max_zoom": 0}}
    ).train
    assert torch.allclose(augment(x, torch.Generator().manual_seed(0), still), x, atol=1e-5)
    moving = params.parse({"train": {"augment": True, "max_shift": 4}}).train
    once = augment(x, torch.Generator().manual_seed(1), moving)
    again = augment(x, torch.Generator().manual_seed(1), moving)
    assert once.shape == x.shape and torch.equal(once, again)  # seeded: same batch, same change
    changed = (once - x).abs().mean(dim=(1, 2, 3))
    assert (changed > 0.05).all()  # every image was moved, each by its own amount
    assert len(set(changed.round(decimals=4).tolist())) == len(x)
