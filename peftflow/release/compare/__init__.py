"""`peftflow compare A B`: two releases or runs side by side.

- sides: Side (one side, frozen), release_side(folder); run folders: peftflow/run/side.py
- diff: compare(Side, Side) -> Comparison (suites, facts, profile keys, warnings, as_dict)
- chart: render(path, curves, title): both loss curves in one PNG
- readers: the metrics.json, loss_data.jsonl and profile readers of the sides
"""
