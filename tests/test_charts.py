"""Chart data preparation (the charts themselves are checked end to end in test_workflow.py)."""

import pandas as pd

from workflow_scripts.charts import with_dense_anchor


def test_each_method_line_starts_at_its_own_dense_score():
    rows = [("a", 1024, "dense", 1.0, 0.9), ("a", 1024, "snapkv", 2.0, 0.5), ("a", 2048, "dense", 1.0, 0.4),
            ("b", 1024, "dense", 1.0, 0.7), ("b", 1024, "quest", 4.0, 0.6)]
    df = pd.DataFrame([dict(model=m, task="t", length=L, method=me, ratio=r, mean=s, se=0.1, n=3)
                       for m, L, me, r, s in rows])
    out = with_dense_anchor(df)
    assert list(out.columns) == list(df.columns)
    added = out.iloc[len(df):]
    # one anchor per (model, task, length, sparse method) that exists, carrying that cell's dense score, at ratio 1
    assert sorted(zip(added["model"], added["length"], added["method"], added["ratio"], added["mean"])) == [
        ("a", 1024, "snapkv", 1.0, 0.9), ("b", 1024, "quest", 1.0, 0.7)]
    assert out.iloc[:len(df)].equals(df)


def test_a_method_has_one_colour_in_every_chart(tmp_path):
    """The same method is drawn in the same colour whatever the other methods of a chart (score vs ratio lists only
    sparse methods, the iso charts dense first, a study may add its own methods)."""
    import json
    import re

    from workflow_scripts.charts import METHOD_COLORS, method_scale, relative_error_chart, score_vs_ratio

    def colours(scale):
        return dict(zip(scale.domain, scale.range))

    alone = colours(method_scale(["quest"]))
    mixed = colours(method_scale(["dense", "snapkv", "my_method", "quest", "vertical_slash"]))
    assert alone["quest"] == mixed["quest"] == METHOD_COLORS["quest"]
    assert mixed["my_method"] not in METHOD_COLORS.values()
    assert len(set(METHOD_COLORS.values())) == len(METHOD_COLORS)

    rows = [dict(model="m", task="t", length=L, method=me, ratio=r, mean=s, se=0.05, n=3, prefill_ratio=r,
                 decode_ratio=1.0) for L in (1024, 2048) for me, r, s in
            (("dense", 1.0, 0.8), ("quest", 2.0, 0.7), ("snapkv", 2.0, 0.6))]
    pd.DataFrame(rows).to_parquet(tmp_path / "summary.parquet")
    pd.DataFrame([dict(length=L, method=me, ratio=2.0, n_cells=1, n_interpolated=0, mean_dense=0.8, mean_sparse=s,
                       relative_error=(0.8 - s) / 0.8) for L in (1024, 2048) for me, s in (("quest", 0.7),
                                                                                          ("snapkv", 0.6))]
                 ).to_parquet(tmp_path / "re.parquet")
    score_vs_ratio(str(tmp_path / "summary.parquet"), str(tmp_path / "s.html"), None)
    relative_error_chart(str(tmp_path / "re.parquet"), str(tmp_path / "r.html"), None)
    for html in ("s.html", "r.html"):
        spec = (tmp_path / html).read_text()
        scales = [json.loads("{" + m + "}") for m in re.findall(r'"domain": (\[[^\]]*\]), "range": (\[[^\]]*\])', spec)
                  for m in [f'"d": {m[0]}, "r": {m[1]}']]
        method_scales = [s for s in scales if "quest" in s["d"]]
        assert method_scales, html
        for s in method_scales:
            assert dict(zip(s["d"], s["r"]))["quest"] == METHOD_COLORS["quest"], html


def test_iso_chart_colours_both_phases_alike(tmp_path):
    """The prefill and decode panels of an iso chart have different methods; concatenated, they share one colour
    scale, which must give each method its own colour (not the prefill panel's colours cycled over the decode
    methods)."""
    import json
    import re

    from workflow_scripts.charts import METHOD_COLORS, iso_chart

    rows = [dict(model="m", length=1024, method=me, ratio=r, n_tasks=1, score=s, se=0.05, cost=c, cost_unit="ms",
                 n_params=1e6, phase=ph, metric="time", on_frontier=False)
            for ph, me, r, s, c in (("prefill", "dense", 1.0, 0.8, 10.0), ("prefill", "vertical_slash", 2.0, 0.7, 8.0),
                                    ("decode", "dense", 1.0, 0.8, 5.0), ("decode", "quest", 2.0, 0.6, 4.0),
                                    ("decode", "snapkv", 2.0, 0.5, 3.0))]
    pd.DataFrame(rows).to_parquet(tmp_path / "pts.parquet")
    iso_chart(str(tmp_path / "pts.parquet"), "isotime", str(tmp_path / "t.html"), None)
    spec = (tmp_path / "t.html").read_text()
    pairs, domains = {}, set()
    for domain, rng in re.findall(r'"domain": (\[[^\]]*\]), "range": (\[[^\]]*\])', spec):
        if "dense" in json.loads(domain):
            domains.add(tuple(json.loads(domain)))
        for method, colour in zip(json.loads(domain), json.loads(rng)):
            pairs.setdefault(method, set()).add(colour)
    assert len(domains) == 1 and set(next(iter(domains))) == {"dense", "vertical_slash", "quest", "snapkv"}
    assert {m: pairs.get(m) for m in ("dense", "vertical_slash", "quest", "snapkv")} == {
        m: {METHOD_COLORS[m]} for m in ("dense", "vertical_slash", "quest", "snapkv")}
