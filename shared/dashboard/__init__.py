"""The dashboard, all of it: the pages (:mod:`.pages`), what a page shows about a run (:mod:`.views`),
templates (:mod:`.render`), inline-SVG charts (:mod:`.charts`) and CSRF protection (:mod:`.csrf`).

``functions/dashboard.py`` only routes each trigger to its page; the CSS and JS are vendored in
``static/``.
"""
