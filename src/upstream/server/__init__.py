"""The web service: REST API under /api, pages, health; a thin layer over the domain."""
