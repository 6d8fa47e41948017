.PHONY: test lint figures example-results

test:
	python3 -m pytest -q

lint:
	python3 -m ruff check .

# Every table and figure of paper_figures/manifest.py into paper_figures/out/ (PNG+PDF, tables as
# Markdown/LaTeX/CSV). Inputs: results/ and runs/ when present, else the shipped examples/.
# Extra flags: make figures FIGURES_ARGS="--examples" (or --results DIR --runs DIR --out DIR --only NAME).
FIGURES_ARGS ?=
figures:
	python3 -m paper_figures $(FIGURES_ARGS)

# Regenerate examples/ by running the tiny pipeline for real on this machine's CPU:
# train (+ sft), offline evaluation of every checkpoint, both ablations, weight dynamics.
example-results:
	python3 scripts/make_example_results.py $(EXAMPLES_ARGS)
