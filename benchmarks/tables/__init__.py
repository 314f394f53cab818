"""The markdown of `benchmarks/reproduce.py`'s tables, one module per table, and what they share.

- `rows`: the rows (loaded, nested, their shared settings), the recommendation (`choose`), the
  paper's figures;
- `sections`: the recommended recipe, the TTA vote rules, one dataset's table of every method;
- `scratch`, `pretrained`, `site_a`, `volumes`: each table's writer.
"""
