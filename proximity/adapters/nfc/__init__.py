"""NFC: taps on nfcpy readers (USB, serial, or the UDP emulator), NDEF decoded by ndeflib.

nfcpy itself is imported only when a reader is opened, so a gateway without NFC
never loads it.
"""

from proximity.adapters.nfc.adapter import NfcAdapter
from proximity.adapters.nfc.ndef import NdefContent, NdefError, NdefRecord, parse_ndef
from proximity.adapters.nfc.tap import NfcTap, hash_tag_uid

__all__ = [
    "NdefContent",
    "NdefError",
    "NdefRecord",
    "NfcAdapter",
    "NfcTap",
    "hash_tag_uid",
    "parse_ndef",
]
