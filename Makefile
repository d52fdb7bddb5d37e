# Two commands do all the set-up on a fresh machine:
#   make demo   -> virtualenv + torch pin + robustlab + Fashion-MNIST, then PGD on zoo:fmnist-cnn
#   make test   -> the same set-up, then ruff and the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test data bench lint clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

data:
	@[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist)

demo: $(VENV)/.installed data
	$(VENV)/bin/robustlab attack --model zoo:fmnist-cnn --dataset fashion-mnist --n 1000 \
	  --attacks pgd --eps 0.1 --steps 10 --out runs/demo --overwrite

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check robustlab tests bench scripts

test: $(VENV)/.installed data lint
	$(PY) -m pytest

bench: $(VENV)/.installed data
	$(PY) bench/attack_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
