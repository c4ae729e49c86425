"""Running grids of variants x seeds (runner, records) and reporting them (tables, plots, task sections)."""
