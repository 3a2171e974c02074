# Balsam-style Python apps: run() returning a value, run() raising, a dependent shell job,
# Job.objects.wait / as_completed and job.result().
import json

from spoolbalsam.api import ApplicationDefinition, Job


class Square(ApplicationDefinition):
    """Squares x."""
    site = "test_aurora"

    def run(self, x):
        return {"x": x, "square": x * x}


class Boom(ApplicationDefinition):
    site = "test_aurora"

    def run(self, msg):
        raise ValueError(msg)


class Shout(ApplicationDefinition):
    site = "test_aurora"
    command_template = "echo {{ text }} | tr a-z A-Z"


Square.sync()
Boom.sync()
Shout.sync()

squares = [Square.submit(workdir=f"py/square{i}", x=i, tags={"kind": "square", "suite": "py"}) for i in range(4)]
boom = Boom.submit(workdir="py/boom", msg="bad input", tags={"kind": "boom", "suite": "py"})
child = Job(workdir="py/child", app_id="Shout", site_name="test_aurora",
            parameters={"text": "after the squares"}, parent_ids=[j.id for j in squares],
            tags={"kind": "child", "suite": "py"})
child.save()
print("SUBMITTED", flush=True)

done, not_done = Job.objects.wait(squares + [boom], timeout=60, poll_interval=0.1)
finished = list(Job.objects.as_completed(squares + [boom, child], timeout=60, poll_interval=0.1))
out = {"done": len(done), "not_done": len(not_done), "as_completed": len(finished),
       "squares": [j.result() for j in squares], "states": sorted({j.state for j in squares}),
       "child_state": child.state, "children_of_0": [j.id for j in Job.objects.filter(parent_id=squares[0].id)],
       "child_id": child.id, "square_ids": [j.id for j in squares], "boom_id": boom.id}
try:
    boom.result()
except ValueError as e:
    out["boom"] = [type(e).__name__, str(e), boom.state]
print(json.dumps(out))
