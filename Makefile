# Two commands for a fresh clone (see README): `make test` and `make demo`.
# Each sets itself up idempotently: Debian packages when run as root, then .venv with everything.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# EGL for offscreen rendering; cmake, a compiler and the Python headers for tf2_msgs
# (tools/build_tf2_msgs.sh: TFMessage for map->odom on /tf without a ROS install).
DEB_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri cmake g++ make python3-dev
# DDS stays on this machine, in a domain of our own (tests pick private domains themselves).
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_DOMAIN_ID ?= 42
export MUJOCO_GL ?= egl
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup debs test lint demo demo-data demo-model baseline-models benchmark bench clean \
  suburb-data two-area-model demo-two-areas

setup: debs $(STAMP)

debs:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get install -y -q $$missing || (apt-get update -q && apt-get install -y -q $$missing)) >/dev/null; \
	  else echo "warning: missing Debian packages$$missing (run as root or install them); rendering tests will skip, tf2_msgs is not built"; fi; \
	fi

# tf2_msgs is not on PyPI: built here (about 15 s; skipped where it imports already). Without
# root the build tools may be missing: then a warning, and map->odom is not published.
$(STAMP): setup.py tools/build_tf2_msgs.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[ros,test]'
	tools/build_tf2_msgs.sh $(VENV) || { [ "$$(id -u)" != 0 ] && \
	  echo "warning: tf2_msgs not built: the localizer publishes no map->odom on /tf"; }
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -ra test

lint: setup
	$(VENV)/bin/ruff check .

# The summary is kept for `make benchmark` (its live row).
demo: setup
	$(VENV)/bin/imposing-ros demo --json runs/demo/summary.json

# The committed demo model, reproduced: render the city, train on every frame of the five
# training traversals in three stages (config/train_helsinki.yaml, train_helsinki_fine.yaml,
# train_helsinki_sharp.yaml: 5 + 15 + 5 epochs), then 5 epochs on seven traversals (two more at
# the lane edges: train_helsinki_wide.yaml), keep fp16 weights (50 MB at most), fit its
# covariance on the calibration traversal, evaluate it on the held-out one.
# Each step prints its wall time; figures of one run are in docs/training.md.
TRAIN_TRAVERSALS := t1_sunny_summer t2_overcast_autumn t3_dusk_summer t4_foggy_spring t5_snowy_winter
HELDOUT := data/helsinki/t6_heldout_winter_morning
CALIBRATION := data/helsinki/t7_calibration_overcast_autumn
WIDE_TRAVERSALS := t8_dusk_summer_right t9_overcast_autumn_left
TRAIN_SPECS = $(foreach t,$(TRAIN_TRAVERSALS),--train helsinki=data/helsinki/$(t)) \
  --val helsinki=$(HELDOUT)
WIDE_SPECS = $(TRAIN_SPECS) $(foreach t,$(WIDE_TRAVERSALS),--train helsinki=data/helsinki/$(t))
timed = start=$$(date +%s); $(1); rc=$$?; echo "[$(2): $$(( $$(date +%s) - start )) s]"; exit $$rc

demo-data: setup
	@test -f $(HELDOUT)/metadata.yaml -a -f $(CALIBRATION)/metadata.yaml \
	  -a -f data/helsinki/$(lastword $(WIDE_TRAVERSALS))/metadata.yaml || { $(call timed,\
	  $(VENV)/bin/imposing-ros sim --scene config/scenes/helsinki.yaml --out data/helsinki,render); }

demo-model: demo-data
	@$(call timed,$(VENV)/bin/imposing-ros train --config config/train_helsinki.yaml \
	  --stop-after 5 --out runs/helsinki $(TRAIN_SPECS),train stage 1)
	@$(call timed,$(VENV)/bin/imposing-ros train --config config/train_helsinki_fine.yaml \
	  --init-from runs/helsinki/last.pt --out runs/helsinki_fine --cache runs/helsinki/cache \
	  $(TRAIN_SPECS),train stage 2)
	@$(call timed,$(VENV)/bin/imposing-ros train --config config/train_helsinki_sharp.yaml \
	  --init-from runs/helsinki_fine/last.pt --out runs/helsinki_sharp --cache runs/helsinki/cache \
	  $(TRAIN_SPECS),train stage 3)
	@$(call timed,$(VENV)/bin/imposing-ros train --config config/train_helsinki_wide.yaml \
	  --init-from runs/helsinki_sharp/last.pt --out runs/helsinki_wide --cache runs/helsinki/cache \
	  $(WIDE_SPECS),train stage 4)
	@$(call timed,$(VENV)/bin/imposing-ros export --model runs/helsinki_wide/last.pt \
	  --format checkpoint-fp16 --out models/helsinki_demo.pt,export)
	@$(call timed,$(VENV)/bin/imposing-ros calibrate --model models/helsinki_demo.pt \
	  --data $(CALIBRATION),calibrate)
	@$(call timed,$(VENV)/bin/imposing-ros evaluate --model models/helsinki_demo.pt \
	  --data $(HELDOUT) --backend torch --json runs/helsinki_wide/heldout.json \
	  --csv runs/helsinki_wide/heldout.csv --plot runs/helsinki_wide/heldout.png,evaluate)

# A second area (config/scenes/suburb.yaml: a suburb from pyrosm's bundled test extract) added
# to the demo model: the suburb's head and pose encoder trained with the backbone frozen
# (config/train_suburb.yaml, train_suburb_sharp.yaml), then both areas together with the
# backbone unfrozen, 5,000 frames of each an epoch (train_two_areas_joint.yaml). The node picks
# the map with `scene: auto` (make demo-two-areas). Needs the Helsinki renders (make demo-data)
# for the joint stage.
SUBURB_TRAIN := s1_sunny_summer s2_overcast_autumn s3_dusk_summer s4_snowy_winter
SUBURB_HELDOUT := data/suburb/s5_heldout_winter_morning
SUBURB_SPECS = $(foreach t,$(SUBURB_TRAIN),--train suburb=data/suburb/$(t)) \
  --val suburb=$(SUBURB_HELDOUT)
TWO_AREAS := models/two_areas.pt

suburb-data: setup
	@test -f $(SUBURB_HELDOUT)/metadata.yaml || { $(call timed,\
	  $(VENV)/bin/imposing-ros sim --scene config/scenes/suburb.yaml --out data/suburb,render); }

two-area-model: suburb-data demo-data
	@$(call timed,$(VENV)/bin/imposing-ros train --config config/train_suburb.yaml \
	  --init-from models/helsinki_demo.pt --out runs/suburb $(SUBURB_SPECS),train stage 1)
	@$(call timed,$(VENV)/bin/imposing-ros train --config config/train_suburb_sharp.yaml \
	  --init-from runs/suburb/last.pt --out runs/suburb_sharp --cache runs/suburb/cache \
	  $(SUBURB_SPECS),train stage 2)
	@$(call timed,$(VENV)/bin/imposing-ros train --config config/train_two_areas_joint.yaml \
	  --init-from runs/suburb_sharp/last.pt --out runs/two_areas_joint \
	  $(TRAIN_SPECS) $(SUBURB_SPECS),train stage 3)
	@$(call timed,$(VENV)/bin/imposing-ros export --model runs/two_areas_joint/last.pt \
	  --format checkpoint-fp16 --out $(TWO_AREAS),export)
	@$(call timed,$(VENV)/bin/imposing-ros calibrate --model $(TWO_AREAS) --scene helsinki \
	  --data $(CALIBRATION),calibrate)
	@# The suburb has no traversal to spare for the covariance fit: its int8 images only.
	@$(call timed,$(VENV)/bin/imposing-ros calibrate --model $(TWO_AREAS) --scene suburb \
	  --images-only --data data/suburb/s2_overcast_autumn,calibrate suburb int8)
	@$(call timed,$(VENV)/bin/imposing-ros evaluate --model $(TWO_AREAS) --scene suburb \
	  --data $(SUBURB_HELDOUT) --backend torch --json runs/two_areas_joint/suburb.json,evaluate)
	@$(call timed,$(VENV)/bin/imposing-ros evaluate --model $(TWO_AREAS) --scene helsinki \
	  --data $(HELDOUT) --backend torch --json runs/two_areas_joint/helsinki.json,evaluate)

# The live demo through both areas: the Helsinki demo bag, then the first 300 frames of the
# suburb's held-out traversal, restamped to follow it; scene auto finds the map. The two-area
# model is not committed (models/ stays under 100 MB): the first run renders and trains it
# (about 70 minutes on 2 AVX2 cores, docs/robot.md).
SUBURB_DEMO_BAG := runs/demo/suburb_heldout_sim/s5_heldout_winter_morning
$(TWO_AREAS):
	$(MAKE) two-area-model

demo-two-areas: setup $(TWO_AREAS)
	@test -f $(SUBURB_DEMO_BAG)/metadata.yaml || $(VENV)/bin/imposing-ros sim \
	  --scene config/scenes/suburb.yaml --traversals s5_heldout_winter_morning \
	  --max-frames 300 --out runs/demo/suburb_heldout_sim
	$(VENV)/bin/imposing-ros demo --model $(TWO_AREAS) \
	  --bag runs/demo/helsinki_heldout $(SUBURB_DEMO_BAG) --json runs/demo/two_areas.json

# The benchmark's baselines (issue 15): image retrieval and pose regression, same data, backbone,
# input size and schedule as the demo model (config/train_helsinki_{retrieval,apr}.yaml); a run
# resumes from its last.pt (STOP_AFTER=N stops after N epochs of the 20: resume later).
STOP_AFTER ?= 20
baseline-models: demo-data
	@$(call timed,$(VENV)/bin/imposing-ros train --method retrieval \
	  --config config/train_helsinki_retrieval.yaml --stop-after $(STOP_AFTER) \
	  --out runs/helsinki_retrieval --cache runs/helsinki/cache $(TRAIN_SPECS),train retrieval)
	@$(call timed,$(VENV)/bin/imposing-ros train --method apr \
	  --config config/train_helsinki_apr.yaml --stop-after $(STOP_AFTER) \
	  --out runs/helsinki_apr --cache runs/helsinki/cache $(TRAIN_SPECS),train apr)
	$(VENV)/bin/imposing-ros export --model runs/helsinki_retrieval/last.pt \
	  --out models/helsinki_retrieval.pt
	$(VENV)/bin/imposing-ros export --model runs/helsinki_apr/last.pt --out models/helsinki_apr.pt

# ImPosing against the baselines on the demo's held-out frames (after make demo).
benchmark: setup
	test -f runs/demo/summary.json || $(MAKE) demo
	rm -rf runs/benchmark && $(VENV)/bin/imposing-ros benchmark --data runs/demo/helsinki_heldout \
	  --live runs/demo/summary.json --out runs/benchmark

bench: setup
	$(VENV)/bin/imposing-ros bench --json runs/bench.json

clean:
	rm -rf $(VENV) build install log *.egg-info
