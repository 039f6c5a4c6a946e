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


def test_the_picture_recipe_is_off_by_default_and_draws_per_image_when_on():
    from cnnpipe.train.augment import PictureAugment

    x = torch.randint(0, 256, (8, 3, 24, 24), dtype=torch.uint8)
    y = torch.arange(8) % 4
    off = PictureAugment(params.TrainParams(crop_scale=1.0), 24, 3, 4)
    assert not off.active and torch.equal(off.images(x), x)
    assert off.mixed(x.float(), y)[1] is y
    on = params.parse(
        {"train": {"crop_scale": 0.3, "color_jitter": 0.4, "auto_augment": "trivial"}}
    ).train
    recipe = PictureAugment(on, 24, 3, 4)
    torch.manual_seed(0)
    once = recipe.images(x)
    torch.manual_seed(0)
    assert torch.equal(once, recipe.images(x))  # seeded by torch's generator
    assert once.shape == x.shape and once.dtype == torch.uint8
    moved = [not torch.equal(once[i], x[i]) for i in range(8)]
    assert sum(moved) >= 6
    # each image its own draw: the same image, repeated, comes out differently
    same = recipe.images(x[:1].repeat(6, 1, 1, 1))
    assert len({same[i].float().sum().item() for i in range(6)}) > 3


def test_mixup_and_cutmix_give_class_probabilities():
    from cnnpipe.train.augment import PictureAugment

    both = params.parse({"train": {"mixup": 0.2, "cutmix": 1.0, "crop_scale": 1.0}}).train
    recipe = PictureAugment(both, 16, 1, 5)
    x, y = torch.randn(10, 1, 16, 16), torch.arange(10) % 5
    for seed in range(4):
        torch.manual_seed(seed)
        mixed, target = recipe.mixed(x, y)
        assert mixed.shape == x.shape and target.shape == (10, 5)
        assert torch.allclose(target.sum(dim=1), torch.ones(10))
        assert (target.max(dim=1).values < 1).any()  # some image holds two classes
