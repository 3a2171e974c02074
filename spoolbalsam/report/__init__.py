"""``spool report``: a campaign's throughput, utilization, states, run times and failures.

``gather``   reads the site once (records, every per-writer event log, allocations) into a
             plain ``Campaign``; it writes nothing
``numbers``  the report itself, a pure function ``Campaign -> dict`` (what ``--json`` prints)
             over the arithmetic of ``spoolbalsam.api.analytics``
``text``     the one-screen summary of that dict
``plot``     the four-panel PNG of that dict (matplotlib, Agg; the optional extra ``plot``)
"""
