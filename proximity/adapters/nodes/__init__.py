"""Remote scanner nodes over MQTT: our own, ESPresense, OpenMQTTGateway/Theengs.

    formats.py   topic + payload -> Batch | Status (pure parsers, fixed problem set)
    ingest.py    per node: duplicates, clock skew, staleness, rate, liveness
    backend.py   NodeBackend: a BleBackend subscribed to the store broker(s)

The formats, topics and the broker ACL: docs/nodes.md.
"""
