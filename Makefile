# The two quick-start commands (README): `make demo` runs the main job on the built-in default,
# `make test` runs every test. Both install what they need first (scripts/setup.sh is idempotent).
.PHONY: setup build demo test lint bench

setup:
	scripts/setup.sh

build: setup
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
