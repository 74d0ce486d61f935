"""The chain's central tier: ``proximity hq`` ingests every store's uplink into PostgreSQL.

    hqconfig   hq.toml: the central broker, the database, store groups, rollout keys
    pgstore    the SQL: migrations, idempotent batch ingest, fleet state, chain reports
    hq         the service: MQTT in, PostgreSQL, acks out, /metrics

The MQTT contract between stores and hq is docs/chain.md.
"""
