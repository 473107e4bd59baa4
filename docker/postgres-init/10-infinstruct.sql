-- Runs once, when the postgres service initialises an empty data volume
-- (mounted into /docker-entrypoint-initdb.d by docker-compose.yaml).
-- Creates the project's own metadata store next to Airflow's database.
-- airflow-init repeats this idempotently, so an older volume gets it too.
SELECT 'CREATE DATABASE infinstruct OWNER airflow'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'infinstruct')\gexec

\connect infinstruct
CREATE EXTENSION IF NOT EXISTS vector;
CREATE EXTENSION IF NOT EXISTS pg_trgm;
