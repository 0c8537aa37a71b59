"""Server-rendered pages (Jinja templates, no CDN, works offline)."""
