"""Small Sphinx fixes for this book, loaded through `local_extensions` in book/_config.yml.

sphinx-thebe 0.3.1 registers its inline configuration script once per `env-before-read-docs` event, which fires more
than once in a Jupyter Book 1 build; the second copy re-declares `const THEBE_JS_URL` and the browser reports a
JavaScript error on every page. Keep only the first copy of each identical inline script.

Notebook execution: `reliable_execution.install()` removes the lost-wake-up stall of nbclient + jupyter_client (see
that module) before myst-nb executes the first notebook.
"""
import reliable_execution


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts, seen = context.get("script_files"), set()
    if not scripts:
        return
    kept = []
    for js in scripts:
        body = getattr(js, "attributes", {}).get("body") if not isinstance(js, str) else None
        key = ("body", body) if body else ("file", str(js))
        if key in seen:
            continue
        seen.add(key)
        kept.append(js)
    scripts[:] = kept


def setup(app):
    reliable_execution.install()
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
