"""Proximity: in-store BLE, NFC and QR signals become calls to action over MQTT."""

__version__ = "0.1.0"
