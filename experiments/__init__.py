"""The papers' experiments, one command each: `mtrank experiment NAME` (see experiments/README.md).

Shared modules: `grid` (the runner: cells, records, resume, progress), `report` (tables, the
claims, report.md and metrics.csv), `stats` (mean ± std, the paired t-test and its markers),
`figures` (PNG), `regression` (the zoo's models on the synthetic regressions), `base` (what an
experiment is; running one), `cli` (the command). One module per experiment: `fdn_synthetic`,
`negative_transfer`.
"""
