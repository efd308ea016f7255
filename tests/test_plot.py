"""The perplexity plot: a PNG, written whole, and no matplotlib warning for a title in a
script the font lacks."""

import subprocess
import sys
import warnings

from grulm.plot import save_perplexity_plot

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_title_the_font_cannot_draw_warns_nothing(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = save_perplexity_plot(tmp_path / "p.png", {"train": [9.0, 4.0, 2.0]},
                                    title="grulm train --data 日本語.txt")
    assert [str(w.message) for w in caught] == []
    assert path.read_bytes().startswith(PNG)
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no .part left


def test_no_python_source_line_reaches_stderr(tmp_path):
    """As a process shows it: matplotlib's glyph warning would print ``fig.tight_layout()``."""
    code = ("import sys; from grulm.plot import save_perplexity_plot; "
            "save_perplexity_plot(sys.argv[1], {'train': [3.0, 2.0], 'validation': "
            "[float('nan'), 2.5]}, title='日本語')")
    result = subprocess.run([sys.executable, "-W", "default", "-c", code, tmp_path / "p.png"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
