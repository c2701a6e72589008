# codat-relay — `make run` serves a complete local instance, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP_RUN  := $(VENV)/.installed-run
STAMP_DEV  := $(VENV)/.installed-dev
STAMP_BENCH:= $(VENV)/.installed-bench
# make test's pytest processes (pytest-xdist): the suite mostly waits on subprocesses and databases, so two
# on two cores took 10.4 min where one took 19.5 (three: 9.1, with more contention). 0 runs it in-process.
PYTEST_WORKERS ?= 2

.PHONY: run test lint typecheck bench demo lock reliability clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP_RUN): requirements.lock pyproject.toml | $(PY)
	$(PIP) install -r requirements.lock
	$(PIP) install --no-deps -e .
	touch $@

$(STAMP_DEV): requirements-dev.lock requirements.lock pyproject.toml | $(PY)
	$(PIP) install -r requirements-dev.lock
	@# The browser test drives Debian's Chromium (Playwright never downloads one); skipped outside CI if absent.
	command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "warning: could not install chromium: the browser test will skip (and fail under CI=true)"
	@# The PgBouncer tests run a private Debian pgbouncer in transaction mode; skipped outside CI if absent.
	command -v pgbouncer >/dev/null 2>&1 || test -x /usr/sbin/pgbouncer || ! command -v apt-get >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null) || \
		echo "warning: could not install pgbouncer: its tests will skip (and fail under CI=true)"
	$(PIP) install --no-deps -e .
	touch $@ $(STAMP_RUN)

$(STAMP_BENCH): requirements-bench.lock $(STAMP_DEV)
	$(PIP) install -r requirements-bench.lock
	touch $@

## run: a complete local instance on SQLite at 127.0.0.1:8000 (generated secrets, sandbox beside it)
run: $(STAMP_RUN)
	$(PY) -m service.dev.local_run

## demo: the whole product in two minutes: sandbox + codat-relay on SQLite, narrated in the terminal
demo: $(STAMP_RUN)
	$(PY) -m service.dev.demo

## test: install what the tests need, lint and type-check, then run the whole suite on SQLite and PostgreSQL
test: $(STAMP_DEV)
	$(VENV)/bin/ruff check service handlers tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: $(STAMP_DEV)
	$(VENV)/bin/ruff check service handlers tests benchmarks

typecheck: $(STAMP_DEV)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

## bench: every benchmark under benchmarks/, five runs each: ratios against baselines measured in the same run
bench: $(STAMP_BENCH)
	$(PY) -m benchmarks.run_all --runs 5

# Issue 16's reproductions that live beside the code they pin (they run in `make test` too).
HARDENING_TESTS := tests/test_ids.py tests/test_settings.py::test_two_roles_sharing_one_token_are_refused \
	tests/test_connection_handler.py::test_a_forged_future_event_cannot_block_a_genuine_reconnect \
	tests/test_notifications.py::test_slack_text_escapes_mentions_links_and_line_breaks \
	tests/test_notifications.py::test_mail_text_and_subject_keep_values_on_their_line \
	tests/test_ui.py::test_logout_ends_the_session_on_the_server \
	tests/test_ui.py::test_failed_logins_and_bearer_guesses_are_throttled_per_address \
	tests/test_webhooks.py::test_a_client_hanging_up_mid_body_is_info_and_not_a_failed_delivery \
	tests/test_intake.py::test_a_string_field_over_the_cap_is_422_and_nothing_is_stored \
	tests/test_intake.py::test_admin_bodies_are_read_capped

## reliability: the reliability suite at full size (crash, duplicates, outage, fuzzing, security); figures in .bench/
reliability: $(STAMP_DEV)
	rm -f .bench/reliability-*.json
	RELIABILITY_FULL=1 $(PY) -m pytest -q -p no:cacheprovider tests/reliability $(HARDENING_TESTS) \
		tests/integration/test_workers_pgbouncer.py $(PYTEST_ARGS)
	@$(PY) -c 'import json, pathlib; [print(p.stem, json.loads(p.read_text())) for p in sorted(pathlib.Path(".bench").glob("reliability-*.json"))]'

## lock: re-resolve the locked versions from requirements*.in (each in a clean venv)
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/pip -q install -r requirements.in && .lockvenv/bin/pip freeze > requirements.lock
	.lockvenv/bin/pip -q install -r requirements-dev.in && .lockvenv/bin/pip freeze > requirements-dev.lock
	.lockvenv/bin/pip -q install -r requirements-bench.in && .lockvenv/bin/pip freeze > requirements-bench.lock
	rm -rf .lockvenv

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
