# toppcloud: `make run` (embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run stop test test-kills test-groups bench check clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

# Everything on this machine: SQLite + filesystem broker under var/, worker,
# beat, Flower, web, and a local node set up by a real job.
run: install
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py run_embedded

# Everything `make run` started, from any shell (it may run in the background): its processes (pids in
# var/run_embedded.json), the local node's supervisord, nginx and apps, and its PostgreSQL cluster. Idempotent.
stop:
	$(BIN)/python manage.py run_embedded --stop

# The suite runs on PostgreSQL + RabbitMQ (tests/settings.py has the defaults).
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Every step of a deploy killed (pool process, whole worker), then one more deploy: about 6 minutes.
test-kills: install
	$(BIN)/python -m pytest -m kills tests/test_reconcile.py $(PYTEST_ARGS)

# Server groups on real hosts of their own (balancer, rolling deploys, replicas, failover): about 7 minutes.
test-groups: install
	$(BIN)/python -m pytest -m groups $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/jobs_throughput.py
	$(BIN)/python bench/deploy.py
	$(BIN)/python bench/backup.py
	$(BIN)/python bench/cron.py
	$(BIN)/python bench/config_apply.py
	$(BIN)/python bench/static.py
	$(BIN)/python bench/restore_load.py
	$(BIN)/python bench/cli.py
	$(BIN)/python bench/admin.py
	$(BIN)/python bench/group.py

check: install
	$(BIN)/python manage.py check

clean:
	rm -rf var .pytest_cache
