"frame_player: the frame order the page's script relies on, the frames themselves, the HTML, and argument errors."
import itertools
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from sde_diffusion.explorers import FramePlayer, figure_png, frame_player


def _draw(a=1.0, kind="sin"):
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 2], [0, a, 0 if kind == "sin" else 2 * a])
    ax.set_title(f"{kind} {a:g}")
    return fig


PARAMS = {"a": [0.5, 1.0, 2.0], "kind": ["sin", "cos"]}


def test_frames_follow_product_order_and_equal_the_rendered_figure():
    p = frame_player(_draw, PARAMS, dpi=30)
    assert p.shape == (3, 2) and len(p.frames) == 6
    for k, combo in enumerate(itertools.product(*PARAMS.values())):
        values = dict(zip(PARAMS, combo))
        assert p.index(**values) == k
        fig = _draw(**values)
        assert p.frame(**values) == figure_png(fig, 30)      # deterministic rendering: the same bytes
        plt.close(fig)
    assert len(set(p.frames)) == 6                            # every combination drew a different figure
    assert p.initial == {"a": 1.0, "kind": "sin"}            # the middle of each grid (the lower middle for even sizes)


def test_html_is_self_contained_and_starts_at_the_initial_frame():
    p = frame_player(_draw, PARAMS, initial={"a": 2.0, "kind": "cos"}, labels={"a": "amplitude"}, dpi=30)
    page = p._repr_html_()
    assert page.count('type="range"') == 2 and "amplitude" in page
    assert f'data-frame="{p.index(a=2.0, kind="cos")}"' in page and 'value="2"' in page and 'value="1"' in page
    assert not re.findall(r'(?:src|href)="(?!data:)', page) and "fetch(" not in page
    assert p.nbytes == len(page.encode()) and "6 frames" in repr(p)
    other = frame_player(_draw, PARAMS, dpi=30)
    assert other.id != p.id                                   # two players on one page do not share an element id


def test_a_value_that_looks_like_html_cannot_end_the_data_block():
    p = frame_player(lambda v: _draw(kind=v), {"v": ["sin", "</script><b>"]}, dpi=30)
    page = p._repr_html_()
    assert page.count("</script>") == 2               # the data block's end and the script's end, nothing else
    assert r"<\/script><b>" in page                # the label, escaped inside the JSON


def test_palette_frames_are_smaller_than_full_colour():
    fig = _draw()
    full, palette = figure_png(fig, 60, colors=None), figure_png(fig, 60)
    plt.close(fig)
    assert full[:8] == palette[:8] == b"\x89PNG\r\n\x1a\n" and len(palette) < len(full)


@pytest.mark.parametrize("kwargs, err, name", [
    (dict(params={}), ValueError, "params"),
    (dict(params={"a": []}), ValueError, "params"),
    (dict(params={"a": "abc"}), ValueError, "params"),
    (dict(params={"a": [1.0, 1.0]}), ValueError, "params"),
    (dict(params={"a": [None]}), TypeError, "params"),
    (dict(params={"a": [True]}), TypeError, "params"),
    (dict(params={"not an arg": [1.0]}), ValueError, "params"),
    (dict(params={"a": [1.0]}, initial={"b": 1.0}), ValueError, "initial"),
    (dict(params={"a": [1.0]}, initial={"a": 3.0}), ValueError, "initial"),
    (dict(params={"a": [1.0]}, dpi=5), ValueError, "dpi"),
    (dict(params={"a": [1.0]}, dpi=True), ValueError, "dpi"),
    (dict(params={"a": [1.0]}, colors=300), ValueError, "colors"),
])
def test_bad_arguments_are_named(kwargs, err, name):
    with pytest.raises(err, match=f"`{name}"):
        frame_player(_draw, **kwargs)


def test_render_must_be_callable_and_return_a_figure():
    with pytest.raises(TypeError, match="`render`"):
        frame_player("not a function", PARAMS)
    with pytest.raises(TypeError, match="`render` must return a matplotlib Figure"):
        frame_player(lambda a: None, {"a": [1.0]})
    p = frame_player(_draw, {"a": [1.0]}, dpi=30)
    with pytest.raises(ValueError, match="`a` = 3.0 is not on its grid"):
        p.index(a=3.0)
    with pytest.raises(ValueError, match="missing a value for `a`"):
        p.index()
    with pytest.raises(ValueError, match="`frames`"):
        FramePlayer({"a": [1.0, 2.0]}, p.frames, {"a": 1.0}, {}, 0.0)
