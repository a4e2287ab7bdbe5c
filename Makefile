# `make demo`: set up, render the demo room, map it, localize its query trajectory, print the evaluation.
# `make test`: set up, lint (ruff) and run the test suite (what CI runs via .ci/run).
VENV := .venv
STAMP := $(VENV)/.installed
SCENELOC := $(VENV)/bin/sceneloc
DEMO := demo-out

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml scripts/setup.sh viewer/package-lock.json viewer/src/viewer.js
	bash scripts/setup.sh

demo: $(STAMP)
	$(SCENELOC) render quick-room --overwrite -o $(DEMO)/scene
	$(SCENELOC) map $(DEMO)/scene -o $(DEMO)/room.map
	$(SCENELOC) localize $(DEMO)/room.map $(DEMO)/scene -o $(DEMO)/poses.txt
	$(SCENELOC) evaluate $(DEMO)/poses.txt --gt $(DEMO)/scene -o $(DEMO)/eval

# Test files run in parallel, one per core (at most 4: each can hold a few GB), every test of a file in the same
# worker so that a file's module fixtures (the maps its tests share) are built once. Each test uses one torch thread.
test: $(STAMP)
	$(VENV)/bin/ruff check sceneloc tests
	$(VENV)/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

bench: $(STAMP)
	$(SCENELOC) bench --suite quick --out bench-out/quick

clean:
	rm -rf $(DEMO) $(VENV)
