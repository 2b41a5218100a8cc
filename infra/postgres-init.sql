-- MLflow uses the default database (POSTGRES_DB=mlflow); Prefect gets its own.
CREATE DATABASE prefect;
