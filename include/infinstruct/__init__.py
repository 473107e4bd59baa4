"""infinstruct: build instruction-tuning datasets the Infinity-Instruct way, as Airflow pipelines.

The library is plain Python: every Airflow task in dags/ is one call into it, and it never imports
Airflow itself.
"""

__version__ = "0.1.0"
