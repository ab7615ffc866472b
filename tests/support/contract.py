"""The reading batch example of the public contract (docs/wire-format.md), byte for byte."""

CONTRACT_EXAMPLE = b"""{"v": 1, "device": "TRK-0042-L1", "seq": 1187, "sent": "2026-11-24T10:15:00Z",
 "readings": [
   {"t": "2026-11-24T10:14:00Z", "c": 4.6, "rh": 61.2},
   {"t": 1795515300000, "c": 4.7}
 ]}"""
