# Airflow image for the infinstruct stack (see docker-compose.yaml).
# Build: docker compose build   (tags ${AIRFLOW_IMAGE_NAME:-infinstruct-airflow:3.3.2})
FROM apache/airflow:3.3.2-python3.11

# Install the pinned project requirements as the airflow user, as the official image expects
# (https://airflow.apache.org/docs/docker-stack/build.html). requirements.txt pins
# apache-airflow==3.3.2, so pip keeps the image's Airflow instead of replacing it.
COPY --chown=airflow:root requirements.txt /opt/airflow/requirements.txt
# a C/C++ compiler for llama-cpp-python (cmake comes from PyPI as a build dependency)
USER root
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
USER airflow
# llama.cpp is compiled here: for the CPUs the image will run on (AVX2 and up), not for the build machine's
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF"
RUN pip install --no-cache-dir -r /opt/airflow/requirements.txt
