# Two commands for a fresh clone (see README): `make test` and `make demo`.
# Each sets itself up idempotently: Debian packages when run as root, then .venv with everything.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEB_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri
# DDS stays on this machine, in a domain of our own (tests pick private domains themselves).
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_DOMAIN_ID ?= 42
export MUJOCO_GL ?= egl
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup debs test lint demo demo-data demo-model bench clean

setup: debs $(STAMP)

debs:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get install -y -q $$missing || (apt-get update -q && apt-get install -y -q $$missing)) >/dev/null; \
	  else echo "warning: missing Debian packages$$missing (run as root or install them); rendering tests will skip"; fi; \
	fi

$(STAMP): setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[ros,test]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -ra test

lint: setup
	$(VENV)/bin/ruff check .

demo: setup
	$(VENV)/bin/imposing-ros demo

# The committed demo model, reproduced: render the city, train on every frame of the five
# training traversals (config/train_helsinki.yaml), keep fp16 weights (models/ holds at most
# 50 MB), fit its covariance on the calibration traversal, evaluate it on the held-out one.
# Each step prints its wall time; figures of one run are in docs/training.md.
TRAIN_TRAVERSALS := t1_sunny_summer t2_overcast_autumn t3_dusk_summer t4_foggy_spring t5_snowy_winter
HELDOUT := data/helsinki/t6_heldout_winter_morning
CALIBRATION := data/helsinki/t7_calibration_overcast_autumn
TRAIN_SPECS = $(foreach t,$(TRAIN_TRAVERSALS),--train helsinki=data/helsinki/$(t)) \
  --val helsinki=$(HELDOUT)
timed = start=$$(date +%s); $(1); rc=$$?; echo "[$(2): $$(( $$(date +%s) - start )) s]"; exit $$rc

demo-data: setup
	@test -f $(HELDOUT)/metadata.yaml -a -f $(CALIBRATION)/metadata.yaml || { $(call timed,\
	  $(VENV)/bin/imposing-ros sim --scene config/scenes/helsinki.yaml --out data/helsinki,render); }

demo-model: demo-data
	@$(call timed,$(VENV)/bin/imposing-ros train --config config/train_helsinki.yaml \
	  --stop-after 5 --out runs/helsinki $(TRAIN_SPECS),train stage 1)
	@$(call timed,$(VENV)/bin/imposing-ros train --config config/train_helsinki_fine.yaml \
	  --init-from runs/helsinki/last.pt --out runs/helsinki_fine --cache runs/helsinki/cache \
	  $(TRAIN_SPECS),train stage 2)
	@$(call timed,$(VENV)/bin/imposing-ros export --model runs/helsinki_fine/last.pt \
	  --format checkpoint-fp16 --out models/helsinki_demo.pt,export)
	@$(call timed,$(VENV)/bin/imposing-ros calibrate --model models/helsinki_demo.pt \
	  --data $(CALIBRATION),calibrate)
	@$(call timed,$(VENV)/bin/imposing-ros evaluate --model models/helsinki_demo.pt \
	  --data $(HELDOUT) --backend torch --json runs/helsinki_fine/heldout.json \
	  --csv runs/helsinki_fine/heldout.csv --plot runs/helsinki_fine/heldout.png,evaluate)

bench: setup
	$(VENV)/bin/imposing-ros bench --json runs/bench.json

clean:
	rm -rf $(VENV) build install log *.egg-info
