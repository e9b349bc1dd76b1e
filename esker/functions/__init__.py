"""The ``esker-functions`` service (docs/functions.md): publish records, the activator that starts a stopped
function for an authorised call, shares, the page, and the counters behind the hub's function metrics.

``store`` (the service's SQLite records), ``access`` (who may call and publish: pure), ``roles`` (the managed
service and its role, for the configurer), ``activator`` (start once, wait, forward), ``stats`` (the metrics
snapshot), ``handlers`` (the routes) and ``service`` (the process).
"""
