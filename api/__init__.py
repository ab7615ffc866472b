"""The HTTP API (FastAPI) for logistics, drivers, QA and the ERP, and the dashboard."""
