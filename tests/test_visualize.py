"""The visualiser draws one rectangle per similar block in each view and writes a real image."""

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from simwnw_hf.data.geometry import make_geometry  # noqa: E402
from simwnw_hf.simwnw import match_blocks  # noqa: E402
from simwnw_hf.simwnw.visualize import block_label, draw_pair, main  # noqa: E402


def test_block_labels_are_unique():
    labels = [block_label(i) for i in range(200)]
    assert labels[:3] == ["A", "B", "C"] and labels[26] == "a" and labels[52] == "AA"
    assert len(set(labels)) == 200


def test_draw_pair_marks_every_similar_block_in_both_views():
    source = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    x1, x2 = source[..., 4:36, 4:36], source[..., 10:42, 6:38]
    g1 = {k: v[None] for k, v in make_geometry(4, 4, 32, 32, False, (32, 32), (48, 48)).items()}
    g2 = {k: v[None] for k, v in make_geometry(10, 6, 32, 32, False, (32, 32), (48, 48)).items()}
    match = match_blocks(x1, x2, g1, g2)
    n_similar = int(match.similar.sum())
    assert 0 < n_similar < match.similar.numel()
    fig = draw_pair(x1[0], x2[0], match)
    for ax in fig.axes[:2]:
        assert sum(isinstance(p, Rectangle) for p in ax.patches) == n_similar
        assert sorted(t.get_text() for t in ax.texts) == sorted(block_label(i) for i in range(n_similar))


def test_cli_writes_png_with_stage_masks(tmp_path, capsys):
    out = tmp_path / "pair.png"
    main(["--dataset", "sample", "--index", "1", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "similar pairs" in capsys.readouterr().out


def test_small_image_figure_is_readable(tmp_path):
    """At 32px: views scaled up side by side, no two block letters overlap, the title names the dataset."""
    from simwnw_hf.simwnw.visualize import build_figure, build_parser

    fig, match = build_figure(build_parser().parse_args(["--dataset", "sample", "--index", "3", "--model", "none"]))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    views = fig.axes[:2]
    for ax in views:
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert len(boxes) == int(match.similar.sum()) > 10
        overlaps = [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
        assert overlaps == [], [(ax.texts[i].get_text(), ax.texts[j].get_text()) for i, j in overlaps]
        assert min(t.get_fontsize() for t in ax.texts) >= 9
        assert ax.get_window_extent(renderer).width >= 400  # a 32px view is drawn >= 12 screen px per pixel
    gap = views[1].get_window_extent(renderer).x0 - views[0].get_window_extent(renderer).x1
    assert gap < 0.15 * views[0].get_window_extent(renderer).width  # no wide empty gap between the views
    title = fig._suptitle.get_text()
    assert title.startswith("bundled CIFAR-10 sample [3] @32px") and "/" not in title.split("@")[0]


def test_out_into_a_missing_folder_is_created(tmp_path):
    out = tmp_path / "new" / "deeper" / "pair.png"
    main(["--dataset", "sample", "--index", "0", "--model", "none", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
