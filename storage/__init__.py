"""Storage: every line of SQL — pool, migrations, registry, readings COPY writer, alerts, audit."""
