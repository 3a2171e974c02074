"""The site process and what only it does.

``loop``     one ``Site.tick()``: intake of dropped files, merging launchers' verdicts,
             launcher liveness and revokes, batch jobs (the protocol is in its docstring)
``intake``   ``check_job``: the one validation of a job against the site (also used by
             submitters before they drop a file)
``service``  the process around the loop: one per site (flock + pid file), signals, watcher
``watch``    noticing change: inotify on local filesystems, polling small things on others
``batch``    batch-job requests and their life with the scheduler
``elastic``  the elastic queue's decision

Nothing here is imported by ``launch/`` except ``service.setup_logging``.
"""
