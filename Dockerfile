FROM python:3.11-slim
# ssh and rsync reach the nodes; nothing else is needed in the control plane image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-client rsync \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 toppcloud \
 && mkdir -p /var/lib/toppcloud && chown toppcloud /var/lib/toppcloud
WORKDIR /app
COPY pyproject.toml README.md ./
COPY toppcloud_site ./toppcloud_site
COPY jobs ./jobs
COPY nodeops ./nodeops
COPY manage.py ./
ENV DJANGO_SETTINGS_MODULE=toppcloud_site.settings STATIC_ROOT=/app/static
RUN pip install --no-cache-dir . \
 && TOPPCLOUD_VAR_DIR=/tmp/build python manage.py collectstatic --no-input -v0 \
 && rm -rf /tmp/build
USER toppcloud
EXPOSE 8000 5555
