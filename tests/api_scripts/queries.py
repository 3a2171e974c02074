# Balsam-style queries on the guide's ensemble: filters, ordering, slicing, update, delete.
# Run after balsam_job_ensemble.py, once the site has taken the jobs in.
import json

from spoolbalsam.api import Job, Site

out = {}
out["all"] = Job.objects.count()
out["demo"] = Job.objects.filter(tags={"workflow": "demo"}).count()
out["echo"] = Job.objects.filter(app_id="EchoHello").count()
out["ready"] = Job.objects.filter(state="READY").count()
out["not_ready"] = Job.objects.filter(state__ne="READY").count()
out["wd"] = [j.workdir for j in Job.objects.filter(workdir__contains="echo_hello1").order_by("workdir")]
last3 = Job.objects.filter(app_id="EchoHello").order_by("-workdir")[:3]
out["last3"] = [j.workdir for j in last3]
out["by_ids"] = len(Job.objects.filter(id=[j.id for j in last3]))
out["excluded"] = Job.objects.filter(app_id="EchoHello").exclude(workdir__contains="echo_hello2").count()
out["updated"] = Job.objects.filter(workdir__contains="echo_hello2").update(
    tags={"workflow": "demo", "batch": "two"})
out["batch_two"] = Job.objects.filter(tags={"batch": "two"}).count()

job = Job.objects.get(workdir__contains="hello_affinity")
job.data = {"note": "checked"}
job.save()
out["data"] = Job.objects.get(id=job.id).data
try:
    Job.objects.get(app_id="EchoHello")
except Job.MultipleObjectsReturned as e:
    out["multiple"] = str(e)
try:
    Job.objects.get(workdir__contains="nothing-like-this")
except Job.DoesNotExist as e:
    out["missing"] = str(e)
out["deleted"] = Job.objects.filter(workdir__contains="echo_hello23").delete()
out["after_delete"] = Job.objects.count()
site = Site.objects.get("test_aurora")
out["site"] = [site.name, site.id]
print(json.dumps(out))
