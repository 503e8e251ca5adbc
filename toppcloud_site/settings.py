"""toppcloud settings: everything comes from the environment.

With nothing set you get the embedded default: SQLite and kombu's filesystem
broker under var/, fine for one machine and for trying toppcloud out.
Production sets DATABASE_URL (PostgreSQL) and CELERY_BROKER_URL (RabbitMQ);
.env.example lists every variable. Mistakes surface as system checks
(toppcloud_site/checks.py, ids toppcloud.E0xx).
"""

import re
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from toppcloud_site.env import env_bool, env_float, env_int, env_list, env_secret, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("TOPPCLOUD_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
# The embedded default has no secret to read; checks refuse it outside DEBUG.
INSECURE_DEFAULT_SECRET_KEY = "toppcloud-embedded-default-not-secret"
SECRET_KEY = env_secret("SECRET_KEY", INSECURE_DEFAULT_SECRET_KEY)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000")

INSTALLED_APPS = [
    # The admin's modules are imported by toppcloud_site/urls.py (admin.autodiscover()), when a web
    # process loads its URLs: management commands and workers do not pay for them at start-up.
    "django.contrib.admin.apps.SimpleAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "toppcloud_site.records",
    "jobs",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # the admin's CSS/JS under gunicorn
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "toppcloud_site.records.audit.ActorMiddleware",  # admin changes are audited under the user's name
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "toppcloud_site.urls"
WSGI_APPLICATION = "toppcloud_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database -------------------------------------------------------------
DATABASE_URL = env_secret("DATABASE_URL", f"sqlite:///{VAR_DIR / 'toppcloud.sqlite3'}")
try:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL cannot be parsed: {exc}") from None
if _db["ENGINE"] not in ("django.db.backends.postgresql", "django.db.backends.sqlite3"):
    raise ImproperlyConfigured(f"DATABASE_URL selects {_db['ENGINE']}; toppcloud runs on PostgreSQL "
                               "(production) or SQLite (embedded)")
if _db["ENGINE"] == "django.db.backends.sqlite3":
    Path(_db["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # Web, worker and beat write concurrently: WAL plus IMMEDIATE transactions
    # make writers queue for the lock instead of failing with "locked".
    _db["CONN_MAX_AGE"] = 0
    _db["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# --- Celery ---------------------------------------------------------------
CELERY_BROKER_URL = env_secret("CELERY_BROKER_URL", "filesystem://localhost/")
if CELERY_BROKER_URL.rstrip("/") == "filesystem:":
    # The filesystem transport ignores the host, but kombu warns on every connection that names none.
    CELERY_BROKER_URL = "filesystem://localhost/"
BROKER_DIR = VAR_DIR / "broker"
if CELERY_BROKER_URL.startswith("filesystem://"):
    for _folder in ("queue", "control", "processed"):
        (BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "control_folder": str(BROKER_DIR / "control"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "store_processed": False,
    }
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# PostgreSQL is the source of truth; Celery only carries job ids.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_DEFAULT_QUEUE = "jobs"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Queues are declared durable in toppcloud_site/celery.py.

# --- jobs -----------------------------------------------------------------
# A queued job not started after this long is sent again (lost message).
JOBS_RESEND_AFTER = env_float("JOBS_RESEND_AFTER", 60.0, minimum=1.0)
# A running job whose worker process sent no heartbeat for this long is lost.
JOBS_LEASE_SECONDS = env_float("JOBS_LEASE_SECONDS", 30.0, minimum=1.0)
JOBS_SWEEP_INTERVAL = env_float("JOBS_SWEEP_INTERVAL", 15.0, minimum=1.0)
# How many times a job is started again after its worker died under it.
JOBS_MAX_ATTEMPTS = env_int("JOBS_MAX_ATTEMPTS", 3, minimum=1, maximum=20)
# Step output kept per event and per job (the rest is cut, and says so).
JOBS_OUTPUT_CAP_EVENT = env_int("JOBS_OUTPUT_CAP_EVENT", 64 * 1024, minimum=1024)
JOBS_OUTPUT_CAP_JOB = env_int("JOBS_OUTPUT_CAP_JOB", 1024 * 1024, minimum=1024)

# --- the tamper-evident log (jobs/engine/seal.py) ----------------------------------
# The key of the event and audit hash chains, kept out of the database (at least 32 characters;
# required with PostgreSQL and DEBUG off: check toppcloud.E020). Unset: a key made in
# $TOPPCLOUD_VAR_DIR/log.key, fine for the embedded default only.
TOPPCLOUD_LOG_KEY = env_secret("TOPPCLOUD_LOG_KEY", "")
# The append-only file every seal is also written to; the services that seal (workers, beat's
# task, `jobs seal`) and `jobs verify` must share it, and it must not live in the database.
TOPPCLOUD_LOG_SEAL_FILE = env_str("TOPPCLOUD_LOG_SEAL_FILE", str(VAR_DIR / "log.seals"))
# Seconds between seals: a job created and deleted within one interval is the one thing not caught.
TOPPCLOUD_LOG_SEAL_INTERVAL = env_float("TOPPCLOUD_LOG_SEAL_INTERVAL", 60.0, minimum=1.0)

# Every this many seconds each node gets a reconcile_node job (jobs/steps/reconcile.py): what interrupted
# jobs left running is stopped, and the front door made what the records say.
JOBS_RECONCILE_INTERVAL = env_float("JOBS_RECONCILE_INTERVAL", 600.0, minimum=60.0)

# Every this many seconds beat asks each balancer (lb node) for its servers' health; a change since the
# last look is a balancer_health job (jobs/actions.py balancer_health). HAProxy itself takes a dead node
# out within 3 s whatever this is: this is how soon the change is on record.
JOBS_BALANCER_HEALTH_INTERVAL = env_float("JOBS_BALANCER_HEALTH_INTERVAL", 15.0, minimum=1.0)

CELERY_BEAT_SCHEDULE = {
    "toppcloud-sweep-jobs": {"task": "jobs.sweep", "schedule": JOBS_SWEEP_INTERVAL},
    "toppcloud-seal-log": {"task": "jobs.seal", "schedule": TOPPCLOUD_LOG_SEAL_INTERVAL},
    "toppcloud-reconcile-nodes": {"task": "jobs.reconcile_nodes", "schedule": JOBS_RECONCILE_INTERVAL},
    "toppcloud-balancer-health": {"task": "jobs.balancer_health", "schedule": JOBS_BALANCER_HEALTH_INTERVAL},
}

# --- releases -------------------------------------------------------------
# Packed app directories, one file per content hash (web and workers share it).
TOPPCLOUD_ARTIFACT_DIR = env_str("TOPPCLOUD_ARTIFACT_DIR", str(VAR_DIR / "artifacts"))

# --- static files on a CDN --------------------------------------------------
# For server groups whose static files origin is s3://bucket/prefix: the S3-compatible service
# (unset: AWS, the region below) and its keys (unset: boto3's own lookup, e.g. an instance role).
TOPPCLOUD_S3_ENDPOINT_URL = env_str("TOPPCLOUD_S3_ENDPOINT_URL", "")
if TOPPCLOUD_S3_ENDPOINT_URL and not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?", TOPPCLOUD_S3_ENDPOINT_URL):
    raise ImproperlyConfigured(f"TOPPCLOUD_S3_ENDPOINT_URL={TOPPCLOUD_S3_ENDPOINT_URL!r} is not an http(s)://host[:port] URL")
TOPPCLOUD_S3_REGION = env_str("TOPPCLOUD_S3_REGION", "")
TOPPCLOUD_S3_ACCESS_KEY_ID = env_str("TOPPCLOUD_S3_ACCESS_KEY_ID", "")
TOPPCLOUD_S3_SECRET_ACCESS_KEY = env_secret("TOPPCLOUD_S3_SECRET_ACCESS_KEY", "")

# --- backups --------------------------------------------------------------
# Backup archives (NAME.tar under a directory per app); web and workers must share it.
TOPPCLOUD_BACKUP_DIR = env_str("TOPPCLOUD_BACKUP_DIR", str(VAR_DIR / "backups"))

# --- secrets at rest -------------------------------------------------------
# Fernet keys, comma-separated: the first encrypts stored secrets (config
# secrets, database passwords), all decrypt. Unset: a key made in
# $TOPPCLOUD_VAR_DIR/secret.key. `manage.py secrets new-key` prints a key.
TOPPCLOUD_SECRET_KEYS = [k.strip() for k in env_secret("TOPPCLOUD_SECRET_KEYS", "").split(",") if k.strip()]

# --- apps' environment, cron and tasks ------------------------------------
# The control plane's URL as apps on the nodes reach it (tasks API); SITE_URL if unset.
TOPPCLOUD_API_URL = env_str("TOPPCLOUD_API_URL", SITE_URL)
# Given to every app as TOPPCLOUD_DEBUG_EMAIL: where apps send error reports.
TOPPCLOUD_DEBUG_EMAIL = env_str("TOPPCLOUD_DEBUG_EMAIL", "")
# Tasks (POST /api/apps/<app>/tasks): payload limit, attempts, backoff between attempts.
TOPPCLOUD_TASK_MAX_PAYLOAD = env_int("TOPPCLOUD_TASK_MAX_PAYLOAD", 64 * 1024, minimum=1024, maximum=16 * 1024 * 1024)
TOPPCLOUD_TASK_MAX_ATTEMPTS = env_int("TOPPCLOUD_TASK_MAX_ATTEMPTS", 5, minimum=1, maximum=50)
TOPPCLOUD_TASK_RETRY_DELAY = env_float("TOPPCLOUD_TASK_RETRY_DELAY", 10.0, minimum=0.01)
TOPPCLOUD_TASK_RETRY_MAX_DELAY = env_float("TOPPCLOUD_TASK_RETRY_MAX_DELAY", 3600.0, minimum=0.01)

# --- nodes ----------------------------------------------------------------
# The control plane's SSH identity; `manage.py ssh_key` creates it if missing.
TOPPCLOUD_SSH_KEY_FILE = env_str("TOPPCLOUD_SSH_KEY_FILE", str(VAR_DIR / "ssh" / "id_ed25519"))
# ControlMaster sockets; kept short because unix socket paths are limited.
TOPPCLOUD_SSH_CONTROL_DIR = env_str("TOPPCLOUD_SSH_CONTROL_DIR", "/tmp/toppcloud-ssh")
# Directories of interpreters an app's `python = 3.N` may use on the nodes, searched after /usr/bin,
# /usr/local/bin and those toppcloud installed under the node root (':'-separated absolute paths).
TOPPCLOUD_PYTHON_DIRS = [d for d in env_str("TOPPCLOUD_PYTHON_DIRS", "").split(":") if d]
for _dir in TOPPCLOUD_PYTHON_DIRS:
    if not re.fullmatch(r"/[A-Za-z0-9._/-]*", _dir) or ".." in _dir.split("/"):
        raise ImproperlyConfigured(f"TOPPCLOUD_PYTHON_DIRS: {_dir!r} is not an absolute path of letters, digits, "
                                   "'.', '_', '-' and '/'")
TOPPCLOUD_SSH_CONNECT_TIMEOUT = env_int("TOPPCLOUD_SSH_CONNECT_TIMEOUT", 10, minimum=1, maximum=300)

# --- Flower ---------------------------------------------------------------
# Read here so checks can refuse a malformed value before flower starts.
FLOWER_BASIC_AUTH = env_secret("FLOWER_BASIC_AUTH", "")
FLOWER_URL = env_str("FLOWER_URL", "http://127.0.0.1:5555")

# --- login throttling (django-axes) -----------------------------------------
# After this many wrong passwords for one username from one address, that pair is locked out (HTTP 429,
# even with the right password) for the cool-off; `manage.py axes_reset` unlocks everyone now.
INSTALLED_APPS.append("axes")
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
MIDDLEWARE.append("axes.middleware.AxesMiddleware")  # last, as axes requires
AXES_FAILURE_LIMIT = env_int("TOPPCLOUD_LOGIN_FAILURE_LIMIT", 5, minimum=1, maximum=1000)
AXES_COOLOFF_TIME = timedelta(seconds=env_float("TOPPCLOUD_LOGIN_COOLOFF_SECONDS", 900.0, minimum=1.0))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# No "AXES: BEGIN" banner on every process start (management commands print only their own output).
AXES_VERBOSE = False
# Proxies of the operator's own in front of the web server (each appends to X-Forwarded-For); 0: none, the
# client's address is the socket's and X-Forwarded-For is ignored (toppcloud_site/throttle.py).
TOPPCLOUD_PROXY_COUNT = env_int("TOPPCLOUD_PROXY_COUNT", 0, minimum=0, maximum=10)
AXES_CLIENT_IP_CALLABLE = "toppcloud_site.throttle.client_ip"

if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
