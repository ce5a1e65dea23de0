"""The dashboard's rendering: templates, inline-SVG charts, the run views and CSRF protection.

The HTTP routes live in :mod:`functions.dashboard`; the CSS and JS are vendored in ``static/``.
"""
