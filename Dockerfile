# Airflow image for the infinstruct stack (see docker-compose.yaml).
# Build: docker compose build   (tags ${AIRFLOW_IMAGE_NAME:-infinstruct-airflow:3.3.2})
FROM apache/airflow:3.3.2-python3.11

# Install the pinned project requirements as the airflow user, as the official image expects
# (https://airflow.apache.org/docs/docker-stack/build.html). requirements.txt pins
# apache-airflow==3.3.2, so pip keeps the image's Airflow instead of replacing it.
COPY --chown=airflow:root requirements.txt /opt/airflow/requirements.txt
USER airflow
RUN pip install --no-cache-dir -r /opt/airflow/requirements.txt
