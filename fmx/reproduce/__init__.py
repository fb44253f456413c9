"""The reproduction study: `make reproduce` runs its grids and writes docs/results.md."""
