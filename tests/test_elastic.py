"""The elastic queue's pure decision: demand vs supply, limits, deletions."""
from spoolbalsam.site.elastic import decide

CFG = {"queue": "debug", "project": "P", "job_mode": "mpi", "min_num_nodes": 2,
       "max_num_nodes": 8, "min_wall_time_min": 10, "max_wall_time_min": 60,
       "max_queued_jobs": 2, "max_queue_wait_time_min": 30, "enabled": True}
LIMITS = {"max_nodes": 6, "max_walltime": 45, "max_queued_jobs": 5}


def bj(bid, state, nodes, submit_time=None):
    return {"id": bid, "queue": "debug", "elastic": True, "state": state, "num_nodes": nodes,
            "submit_time": submit_time}


def test_submits_the_shortfall_clamped_to_queue_limits():
    d = decide(CFG, LIMITS, [], demand=20.0, busy=0.0, now=1000.0)
    assert d.submit_nodes == 6                 # wants 20, max_num_nodes 8, queue max 6
    assert d.submit_wall_min == 45             # max_wall_time_min 60 capped by the queue


def test_small_demand_gets_min_num_nodes():
    d = decide(CFG, LIMITS, [], demand=0.25, busy=0.0, now=0.0)
    assert d.submit_nodes == 2


def test_no_submission_when_supply_covers_demand():
    d = decide(CFG, LIMITS, [bj("1", "queued", 4, 0.0)], demand=3.0, busy=0.0, now=10.0)
    assert d.submit_nodes == 0 and "supply" in d.why


def test_busy_nodes_are_not_supply():
    d = decide(CFG, LIMITS, [bj("1", "running", 4, 0.0)], demand=3.0, busy=4.0, now=10.0)
    assert d.submit_nodes == 3                 # 3 demanded, 4 allocated but all busy


def test_max_queued_jobs_stops_flooding():
    jobs = [bj("1", "queued", 2, 0.0), bj("2", "pending_submission", 2)]
    d = decide(CFG, LIMITS, jobs, demand=100.0, busy=0.0, now=10.0)
    assert d.submit_nodes == 0 and "max_queued_jobs" in d.why


def test_long_queued_jobs_are_deleted_and_replaced():
    jobs = [bj("1", "queued", 2, 0.0), bj("2", "queued", 2, 0.0)]
    d = decide(CFG, LIMITS, jobs, demand=10.0, busy=0.0, now=31 * 60.0)
    assert d.delete == ("1", "2")
    assert d.submit_nodes == 6


def test_other_queues_and_manual_jobs_do_not_count():
    manual = {"id": "9", "queue": "debug", "state": "queued", "num_nodes": 50, "submit_time": 0.0}
    other = dict(bj("8", "queued", 50, 0.0), queue="prod")
    d = decide(CFG, LIMITS, [manual, other], demand=4.0, busy=0.0, now=1.0)
    assert d.submit_nodes == 4
