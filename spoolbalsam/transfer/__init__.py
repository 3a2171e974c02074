"""Data staging (Balsam's transfers): what an app's transfer slots, a job's transfer items
and a site's transfer locations mean (``items``), the small interface every transfer
backend offers (``base``), and the two backends: ``local`` (copy, hard link or rsync
between filesystems this host mounts) and ``globus`` (Globus Transfer through
``globus-sdk``).  The site's side -- which jobs wait for which items, and the moves of
their records -- is ``spoolbalsam.site.transfers``.
"""
