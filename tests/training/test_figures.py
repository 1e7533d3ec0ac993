import numpy as np
import pytest

from medjax.training.figures import mid_slices, panel_rows, save_loss_curve, save_reconstructions, tensorboard_image


def test_mid_slices_3d_and_2d():
    v = np.arange(4 * 6 * 8).reshape(4, 6, 8)
    sag, cor, axi = mid_slices(v)
    assert sag.shape == (6, 8) and cor.shape == (4, 8) and axi.shape == (4, 6)
    np.testing.assert_array_equal(axi, v[:, :, 4])
    assert len(mid_slices(np.zeros((5, 7)))) == 1
    with pytest.raises(ValueError):
        mid_slices(np.zeros(3))


def test_panel_rows_error_column():
    x = np.ones((2, 4, 4, 4, 1), np.float32)
    r = x * 0.5
    rows = panel_rows(x, x * 0, r)
    assert len(rows) == 6  # 2 samples x 3 planes
    np.testing.assert_allclose(rows[0][1][3], 0.5)


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_reconstruction_and_loss_pngs(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 8, 8, 1)).astype(np.float32)
    p = save_reconstructions(tmp_path / "r" / "step_000010.png", x, x * 0, x + 0.1, title="t")
    w, h = _png_size(p)
    assert h > w  # 6 rows by 4 columns
    p2 = save_reconstructions(tmp_path / "r2.png", x[:, :, :, 0], x[:, :, :, 0] * 0, x[:, :, :, 0])  # 2D (N, H, W, C)
    w2, h2 = _png_size(p2)
    assert h2 < h
    w3, h3 = _png_size(save_loss_curve(tmp_path / "loss.png", [1, 2, 3], [3.0, 2.0, 1.0]))
    assert w3 > 0 and h3 > 0


def test_tensorboard_image_range():
    img = tensorboard_image([np.arange(12.0).reshape(3, 4), np.ones((2, 2))])
    assert img.shape == (4, 3 + 1 + 2 + 1)
    assert img.min() == 0.0 and img.max() == 1.0
