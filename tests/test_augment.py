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


def test_erase_blanks_one_rectangle_per_image_within_the_bounds():
    from cnnpipe.train.augment import erase

    x = torch.ones(200, 2, 32, 32)
    assert torch.equal(erase(x, torch.Generator().manual_seed(0), 0.0), x)
    out = erase(x, torch.Generator().manual_seed(0), 1.0, area=(0.02, 0.25))
    assert torch.equal(out, erase(x, torch.Generator().manual_seed(0), 1.0))  # seeded
    zeroed = (out == 0).all(dim=1)  # both channels erased together
    assert torch.equal(zeroed, (out == 0).any(dim=1))
    fraction = zeroed.float().mean(dim=(1, 2))
    assert ((fraction > 0) & (fraction <= 0.25 + 0.05)).all()  # each image, its own size
    assert len(set(fraction.tolist())) > 20
    rows, cols = zeroed.any(dim=2), zeroed.any(dim=1)
    assert torch.equal(zeroed, rows.unsqueeze(2) & cols.unsqueeze(1))  # a rectangle
    half = erase(x, torch.Generator().manual_seed(1), 0.5)
    assert 60 < int((half == 0).flatten(1).any(dim=1).sum()) < 140
