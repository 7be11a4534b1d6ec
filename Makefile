# The two quick-start commands (README): `make demo` runs the main job on the built-in default,
# `make test` runs every test. Each installs what it needs first (scripts/setup.sh is idempotent): the demo
# only PyTorch (libtorch), the tests also the Python oracles, Chromium and vLLM.
.PHONY: setup setup-demo build demo test lint bench

setup:
	scripts/setup.sh test

setup-demo:
	scripts/setup.sh demo

build: setup-demo
	cargo build --release

demo: build
	scripts/demo.sh

test: setup
	cargo test --workspace --release

lint:
	cargo fmt --check
	cargo clippy --workspace --all-targets -- -D warnings

bench: setup
	cargo bench -p alp-rollout --bench generate
