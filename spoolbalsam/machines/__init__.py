"""Machine descriptions, by name.

``MACHINES`` is the whole registry: adding a machine is one module defining
``MACHINE`` plus its line here. No dotted paths in settings; grep finds them all.
"""
from . import aurora, local, polaris, slurm
from .base import Machine, QueueLimits, expand_slurm_nodelist, parse_nodefile

MACHINES: dict[str, Machine] = {
    "local": local.MACHINE,
    "aurora": aurora.MACHINE,
    "polaris": polaris.MACHINE,
    "slurm": slurm.MACHINE,
}


def get_machine(name: str) -> Machine:
    """The machine called ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return MACHINES[name]
    except KeyError:
        raise ValueError(f"unknown machine {name!r}; known: {', '.join(sorted(MACHINES))}") \
            from None


__all__ = ["MACHINES", "Machine", "QueueLimits", "get_machine", "expand_slurm_nodelist",
           "parse_nodefile"]
