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
