"""Every figure follows the house rules of ``analysis/plotstyle.py``.

Each figure function (the experiments' figures from ``analysis.registry``, the theory figures,
the ``inspect`` figures) is drawn from the small inputs of ``tests/figure_inputs.py``
(synthetic results shaped like the experiments' ``run`` output, real theory checks at 20
instances, random adapters). Checked on each:

- legend entries are distinct in text and in style, and told apart without colour: entries
  with markers differ in marker shape or fill (a marker hides the dashes of a short key), entries
  without markers in line style, bars in fill or hatch;
- no legend overlaps any panel;
- interval bands and error bars of shares (counts) lie inside [0, 1] ([0, N]);
- a panel with nothing to see (all zero, or no data) carries a note, and only such a panel.

``test_the_checks_catch_each_defect`` draws a figure with every defect and sees each check fire.
"""
from __future__ import annotations

import numpy as np
import pytest
from figure_inputs import SYNTHETIC, cases, mechanism_results, rank_depth_results, theory_checks, two_hop_results
from matplotlib import pyplot as plt
from matplotlib.collections import LineCollection, PathCollection, PolyCollection
from matplotlib.colors import to_hex, to_rgba
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from analysis import registry
from analysis.plotstyle import EMPTY_NOTE, new_figure, save_figure

RATE_FIGURES = {"mechanism_bridge", "rank_depth_accuracy", "two_hop_methods", "two_hop_libraries",
                "two_hop_templates", "two_hop_retention", "two_hop_conditional", "two_hop_specificity", "two_hop_ood",
                "pretrained_two_hop", "code_reuse_methods"}  # every panel plots shares in [0, 1]


# --- the checks: each returns a list of problems (empty: the figure follows the rule) ---------

def _line_key(h: Line2D) -> tuple[tuple, tuple]:
    marker, ls = h.get_marker(), h.get_linestyle()
    has_marker, has_line = marker not in (None, "", " ", "None", "none"), ls not in ("None", "", " ", "none")
    filled = has_marker and to_rgba(h.get_markerfacecolor())[3] > 0
    full = ("line", to_hex(h.get_color()), ls if has_line else None, marker if has_marker else None, filled)
    # without colour, a marker hides the dashes of a short legend key: markers must differ in shape or fill
    grey = ("line", None if has_marker else ls, marker if has_marker else None, filled)
    return full, grey


def _key(h) -> tuple[tuple, tuple]:
    """(style with colour, style a greyscale reader can still see) of a legend key."""
    if isinstance(h, Line2D):
        return _line_key(h)
    if isinstance(h, Patch):
        face = to_rgba(h.get_facecolor())
        filled = face[3] > 0 and face[:3] != (1.0, 1.0, 1.0)
        return ("patch", to_hex(face, keep_alpha=True), to_hex(h.get_edgecolor()), h.get_hatch()), \
            ("patch", filled, h.get_hatch() or None)
    if isinstance(h, PathCollection):
        shape = tuple(np.round(h.get_paths()[0].vertices, 3).ravel())
        face = h.get_facecolor()
        filled = len(face) > 0 and face[0][3] > 0
        return ("points", shape, to_hex(face[0]) if filled else None), ("points", shape, filled)
    raise AssertionError(f"legend key of an unexpected kind: {type(h).__name__}")


def _legends(fig) -> list:
    return list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]


def legend_problems(fig) -> list[str]:
    problems, labels, full, grey = [], {}, {}, {}
    for legend in _legends(fig):
        for h, text in zip(legend.legend_handles, legend.get_texts()):
            label, (f, g) = text.get_text(), _key(h)
            for seen, key, what in ((labels, label, "text"), (full, f, "style"), (grey, g, "greyscale style")):
                if key in seen:
                    problems.append(f"legend entries {seen[key]!r} and {label!r} have the same {what}")
                seen.setdefault(key, label)
    return problems


def _panels(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def overlap_problems(fig) -> list[str]:
    renderer = fig.canvas.get_renderer()
    problems = []
    for legend in _legends(fig):
        box = legend.get_window_extent(renderer)
        for i, ax in enumerate(a for a in fig.axes if a.get_visible()):
            if box.overlaps(ax.get_window_extent(renderer)):
                problems.append(f"a legend ({legend.get_texts()[0].get_text()!r}, ...) overlaps panel {i} "
                                f"{ax.get_title()!r}")
    return problems


def _interval_ys(ax) -> list[float]:
    """y values of the interval bands (fill_between) and error bars drawn in ``ax``."""
    ys = [v for c in ax.collections if isinstance(c, PolyCollection) for p in c.get_paths() for v in p.vertices[:, 1]]
    for container in ax.containers:
        bars = getattr(container, "errorbar", None)
        for c in (bars.lines[2] if bars is not None else ()):
            if isinstance(c, LineCollection):
                ys += [y for seg in c.get_segments() for y in np.asarray(seg)[:, 1]]
    return ys


def band_problems(name: str, fig, inputs) -> tuple[list[str], int]:
    """Problems, and how many interval values were checked (0 would make the check vacuous)."""
    if name in RATE_FIGURES:
        ranges = [(ax, (0.0, 1.0)) for ax in _panels(fig)]
    elif name == "rank_depth_capacity":  # left panel: facts recalled, in [0, N]
        ranges = [(_panels(fig)[0], (0.0, float(inputs[0].result["capacity"]["n_facts"])))]
    else:
        return [], 0
    problems, checked = [], 0
    for ax, (lo, hi) in ranges:
        ys = np.asarray(_interval_ys(ax))
        checked += ys.size
        if ys.size and (ys.min() < lo - 1e-9 or ys.max() > hi + 1e-9):
            problems.append(f"panel {ax.get_title()!r}: an interval reaches [{ys.min():.3g}, {ys.max():.3g}], "
                            f"outside the metric's range [{lo:g}, {hi:g}]")
    return problems, checked


def _data_values(ax) -> list[float] | None:
    """What a panel shows: data lines, bars, points; None for an image (a heatmap)."""
    if ax.images:
        return None
    ys = [y for line in ax.lines if line.get_transform() is ax.transData for y in np.asarray(line.get_ydata(), float)]
    ys += [p.get_height() for c in ax.containers for p in getattr(c, "patches", ())]
    ys += [y for c in ax.collections if isinstance(c, PathCollection) for y in np.asarray(c.get_offsets())[:, 1]]
    return ys


def empty_panel_problems(fig) -> tuple[list[str], int]:
    """Problems, and how many panels were empty (and noted)."""
    problems, empty = [], 0
    for i, ax in enumerate(_panels(fig)):
        values = _data_values(ax)
        if values is None:
            continue
        x = np.asarray(values, dtype=float)
        is_empty = not np.any(x[np.isfinite(x)] != 0)
        noted = any(t.get_gid() == EMPTY_NOTE and t.get_text() for t in ax.texts)
        empty += is_empty
        if is_empty != noted:
            problems.append(f"panel {i} {ax.get_title()!r}: " + ("shows nothing but has no note saying why"
                                                                 if is_empty else "has data but an empty-panel note"))
    return problems, empty


# --- the tests ---------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_every_experiment_has_synthetic_results():
    missing = set(registry.experiments()) - set(SYNTHETIC)
    assert not missing, f"add synthetic results for {sorted(missing)} to tests/test_figures.py"


@pytest.mark.parametrize("name,fn,inputs", list(cases()))
def test_figure_follows_the_house_rules(name, fn, inputs):
    fig, data = fn(inputs())
    fig.canvas.draw()
    bands, _ = band_problems(name, fig, inputs())
    empty, _ = empty_panel_problems(fig)
    problems = legend_problems(fig) + overlap_problems(fig) + bands + empty
    assert problems == [], f"{name}:\n" + "\n".join(problems)
    assert _legends(fig) or name in {"mechanism_router", "inspect_similarity"}, f"{name} has no legend"


def _raw_interval_extremes(data) -> list[float]:
    """Unclipped interval ends in a sidecar (``low``/``high`` or ``mean`` +- ``half_width``)."""
    if isinstance(data, dict):
        out = [v for k in ("low", "high") if k in data for v in np.ravel(data[k])]
        if "half_width" in data:
            out += list(np.add(data["mean"], data["half_width"])) + list(np.subtract(data["mean"], data["half_width"]))
        return out + [v for value in data.values() for v in _raw_interval_extremes(value)]
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return [v for value in data for v in _raw_interval_extremes(value)]
    return []


@pytest.mark.parametrize("experiment,name", [("mechanism", "mechanism_bridge"), ("rank_depth", "rank_depth_accuracy"),
                                             ("rank_depth", "rank_depth_capacity"), ("two_hop_reuse", "two_hop_methods")])
def test_band_check_sees_intervals_that_leave_the_range(experiment, name):
    """The inputs make raw 95% intervals reach outside the range, so the clipping check bites."""
    results = SYNTHETIC[experiment]()
    fig, data = registry.get(experiment).figures[name](results)
    fig.canvas.draw()
    raw = np.asarray([v for v in _raw_interval_extremes(data) if np.isfinite(v)])
    top = 1.0 if name in RATE_FIGURES else results[0].result["capacity"]["n_facts"]
    assert raw.min() < 0 or raw.max() > top
    problems, checked = band_problems(name, fig, results)
    assert checked > 0 and problems == []


def test_all_zero_panels_carry_a_note_and_only_they():
    fig, _ = registry.get("mechanism").figures["mechanism_bridge"](mechanism_results())
    notes = {ax.get_title().split("\n")[0]: [t.get_text() for t in ax.texts if t.get_gid() == EMPTY_NOTE]
             for ax in _panels(fig)}
    assert notes.pop("latent, familiarity F")[0].startswith("all zero")
    assert notes and not any(notes.values())
    fig, _ = registry.get("two_hop_reuse").figures["two_hop_methods"](two_hop_results())
    assert empty_panel_problems(fig) == ([], 1)


def test_router_x_label_names_the_tokens_it_shows():
    fig, data = registry.get("mechanism").figures["mechanism_router"](mechanism_results())
    for ax in _panels(fig):
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        fmt = ax.get_title().split(",")[0]
        assert ticks == data[fmt]["tokens"]
        assert ("then B" in ax.get_xlabel()) == ("B" in ticks) and "SEP" in ax.get_xlabel()


def test_capacity_figure_marks_the_distance_of_no_update():
    """The right panel plots ||DW K - D*|| / ||D*||, which is 1 for DW = 0: the line at 1 and
    the note say why a LoRA recalling every fact can sit there."""
    fig, _ = registry.get("rank_depth").figures["rank_depth_capacity"](rank_depth_results())
    right = _panels(fig)[1]
    assert any(np.allclose(line.get_ydata(), 1.0) for line in right.lines if line.get_transform() is not right.transData)
    assert "not a recall error" in right.get_title() and any("cross-entropy" in t.get_text() for t in right.texts)


def test_the_checks_catch_each_defect():
    """A figure with every defect the checks exist for: each check reports it."""
    fig, (ax, empty) = new_figure(ncols=2)
    ax.plot([0, 1], [0.2, 0.8], color="C0", linestyle="-", marker="o", label="two-hop")
    ax.plot([0, 1], [0.3, 0.7], color="C1", linestyle="--", marker="o", label="control")  # dashes under a marker
    ax.plot([0, 1], [0.5, 0.5], color="C1", linestyle="--", marker="o", label="control")  # same text and style
    ax.fill_between([0, 1], [-0.2, 0.5], [0.6, 1.3], alpha=0.2)  # a share's band past 0 and 1
    empty.plot([0, 1], [0, 0])  # all zero, no note
    ax.legend(loc="center")  # over the data
    fig.canvas.draw()
    legend = legend_problems(fig)
    assert any("same text" in p for p in legend) and any("same greyscale style" in p for p in legend)
    assert any("same style" in p for p in legend)
    assert overlap_problems(fig)
    assert band_problems("mechanism_bridge", fig, None)[0]
    assert empty_panel_problems(fig) == (["panel 1 '': shows nothing but has no note saying why"], 1)


def test_saved_figures_are_byte_identical_on_rerun(tmp_path):
    from analysis.figures.recall import p1_gd_convergence

    for out in ("a", "b"):
        fig, data = p1_gd_convergence(theory_checks("P1"))
        save_figure(fig, tmp_path / out, "p1", data, {"claim": "P1"})
    for ext in ("png", "pdf", "json"):
        assert (tmp_path / "a" / f"p1.{ext}").read_bytes() == (tmp_path / "b" / f"p1.{ext}").read_bytes()


def test_two_hop_metric_figures_plot_what_the_results_hold():
    """Recomputed by hand from the synthetic results: retention is the mean of the AB and BC facts,
    conditional composition pools right / n over seeds (each bar labelled with its n), split O is
    drawn where the results have it (CoT) and named as missing where they do not (latent)."""
    figures, results = registry.get("two_hop_reuse").figures, two_hop_results()
    main = [r for r in results if r.config.condition == "main"]
    cot_r = [r.result["splits"]["R"]["models"]["average/hops"] for r in main if r.config.fmt == "cot"]

    _, data = figures["two_hop_retention"](results)
    retention = np.mean([(m["facts"]["AB"] + m["facts"]["BC"]) / 2 for m in cot_r])
    assert data["cot/R"]["average/hops"]["retention"]["mean"] == pytest.approx(retention)
    assert "latent/O" not in data and "cot/O" in data

    fig, data = figures["two_hop_conditional"](results)
    n = sum(m["conditional"]["n"] for m in cot_r)
    right = sum((m["conditional"]["composed"] or 0) * m["conditional"]["n"] for m in cot_r)
    bar = data["cot/R"]["{AB, BC}"][data["cot/R"]["models"].index("average")]
    assert (bar["n"], bar["mean"]) == (n, pytest.approx(right / n))
    panel = next(ax for ax in _panels(fig) if ax.get_title() == "cot, split R")
    assert str(n) in [t.get_text() for t in panel.texts]

    fig, data = figures["two_hop_ood"](results)
    titles = [ax.get_title() for ax in _panels(fig)]
    assert "O" in data["cot"] and "O" not in data["latent"]
    assert "split O not in these results" in titles[0] and "split O" not in titles[1]
