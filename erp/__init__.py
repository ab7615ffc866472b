"""The ERP boundary: master-data import, outbound adapters and recalls."""
