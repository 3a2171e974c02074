# The Aurora guide's balsam_job_ensemble.py with data staging: each echo job's greeting
# is a file staged in from Flare before it runs, and its job.out is staged out to home
# after it ran. As in the guide, only the import line differs from Balsam. FLARE and
# HOME_OUT name the directories (on Aurora: /lus/flare/projects/PROJECT/..., $HOME/...);
# the site's settings.yml maps the aliases "flare" and "home" onto those filesystems.
import os

from spoolbalsam.api import ApplicationDefinition, Job

FLARE = os.environ.get("FLARE", "/lus/flare/projects/PROJECT/greetings")
HOME_OUT = os.environ.get("HOME_OUT", os.path.expanduser("~/campaign/results"))

# An application that runs an echo command, takes an input parameter and a staged file
class EchoHello(ApplicationDefinition):
    site = "test_aurora"
    command_template = "echo Hello, {{ say_hello_to }}! $(cat greeting.txt) GPU tiles=$SPOOL_GPU_IDS"
    transfers = {
        "greeting": {"required": True, "direction": "in", "local_path": "greeting.txt",
                     "description": "the greeting, from Flare", "recursive": False},
        "log": {"required": False, "direction": "out", "local_path": "job.out",
                "description": "the job's output, to home", "recursive": False},
    }
EchoHello.sync()

# An application that runs a multi-rank program (here: each rank reports its tiles)
class HelloAffinity(ApplicationDefinition):
    site = "test_aurora"
    command_template = 'sh -c "echo rank \\$PMI_RANK of \\$PMI_SIZE: tiles=\\$CUDA_VISIBLE_DEVICES"'
HelloAffinity.sync()

# A Balsam job that runs hello_affinity on one node with twelve ranks per node
affinity_job = Job(site_name="test_aurora",
                   app_id="HelloAffinity",
                   workdir=f"demo/hello_affinity",
                   tags={"workflow":"demo"},
                   num_nodes=1,
                   node_packing_count=1,
                   ranks_per_node=12,
                   gpus_per_rank=1)
affinity_job.save()

# Many jobs that run the EchoHello app each on a single tile, each with its own greeting
echo_jobs = [Job( site_name="test_aurora",
         app_id="EchoHello",
         workdir=f"demo/echo_hello{n}",
         parameters={"say_hello_to": f"world {n}!"},
         tags={"workflow":"demo"},
         node_packing_count=12, # this allows for 12 of these jobs to run concurrently on a node
         gpus_per_rank=1,
         ranks_per_node=1,
         transfers={"greeting": f"flare:{FLARE}/greeting{n}.txt",
                    "log": f"home:{HOME_OUT}/echo_hello{n}.out"},)
    for n in range(24)
]
echo_jobs = Job.objects.bulk_create(echo_jobs)
