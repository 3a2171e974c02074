# Balsam's analytics notebook cell with only the import lines changed: events of a tagged
# workflow -> throughput_report / utilization_report -> matplotlib step plot -> savefig.
# Usage: analytics_throughput.py OUT.png TAG_KEY TAG_VALUE  (the site from $SPOOL_SITE)
import json
import sys

from matplotlib import pyplot as plt

from spoolbalsam.api import EventLog
from spoolbalsam.api.analytics import throughput_report, utilization_report

out, key, value = sys.argv[1:4]
events = EventLog.objects.filter(tags={key: value})

times, done_counts = throughput_report(events, to_state="JOB_FINISHED")
t0 = min(times)
elapsed_minutes = [(t - t0).total_seconds() / 60 for t in times]
fig = plt.Figure()
plt.step(elapsed_minutes, done_counts, where="post")
plt.xlabel("Elapsed time (minutes)")
plt.ylabel("Jobs completed")
plt.savefig(out)

util_times, node_util = utilization_report(events, node_weighting=True)
print(json.dumps({"done": done_counts[-1], "first_done": times[0].timestamp(),
                  "peak_nodes": max(node_util), "last_nodes": node_util[-1],
                  "points": len(util_times)}))
