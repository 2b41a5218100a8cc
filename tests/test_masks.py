import pytest
import torch

from taskprune import masks
from taskprune.scoring.magnitude import magnitude_scores
from taskprune.scoring.wanda import wanda_scores


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_unstructured_mask_has_exact_per_row_sparsity(sparsity):
    scores = torch.rand(16, 40)
    mask = masks.unstructured_mask(scores, sparsity)
    assert (mask.sum(dim=1) == 40 - int(40 * sparsity)).all()
    # the kept weights are the row's highest scores
    kept_min = torch.where(mask, scores, torch.inf).min(dim=1).values
    dropped_max = torch.where(~mask, scores, -torch.inf).max(dim=1).values
    assert (kept_min >= dropped_max).all()


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_nm_mask_keeps_n_of_every_m(n, m):
    scores = torch.rand(8, 32)
    mask = masks.nm_mask(scores, n, m)
    assert (mask.reshape(8, 32 // m, m).sum(dim=2) == n).all()
    assert masks.sparsity(mask) == pytest.approx(1 - n / m)


def test_nm_mask_rejects_indivisible_width():
    with pytest.raises(ValueError, match="divisible by 4"):
        masks.nm_mask(torch.rand(2, 10), 2, 4)


def test_pack_roundtrip_and_size(tmp_path):
    shapes = {"0.a": (7, 13), "1.b": (64, 64)}
    original = {k: torch.rand(s) > 0.5 for k, s in shapes.items()}
    masks.save_masks(tmp_path / "m.safetensors", original)
    loaded = masks.load_masks(tmp_path / "m.safetensors")
    for key in shapes:
        assert torch.equal(loaded[key], original[key])
    assert masks.pack(original["1.b"]).numel() == 64 * 64 // 8  # one bit per weight


def test_wanda_formula_and_magnitude():
    weight = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    square_sums = torch.tensor([4.0, 1.0])
    expected = torch.tensor([[2.0, 2.0], [6.0, 0.5]])
    assert torch.allclose(wanda_scores(weight, square_sums), expected)
    assert torch.allclose(magnitude_scores(weight), weight.abs())
    with pytest.raises(ValueError, match="expected \\(2,\\)"):
        wanda_scores(weight, torch.ones(3))


def test_wanda_prefers_channels_with_large_activations():
    weight = torch.ones(4, 8)
    square_sums = torch.arange(1.0, 9.0)
    mask = masks.unstructured_mask(wanda_scores(weight, square_sums), 0.5)
    assert mask[:, 4:].all() and not mask[:, :4].any()
