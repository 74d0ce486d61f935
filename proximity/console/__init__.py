"""The ops console in the browser: live store, funnel, rules.

:mod:`.server` (the pages and the HTTP side), :mod:`.feed` (the live feed the daemon
fills), :mod:`.views` (the HTML), :mod:`.settings` (``[console]``). Nothing is imported
here, so the settings model can be loaded by ``proximity.config`` on its own.
"""
