"""The built-in synthetic world: a seeded general world and a finance domain, with labelled tasks.

    from ckptlab.synthetic import generate, write_world
    write_world(generate(seed=0, size="demo"), "data/world")

Layout of the written directory, what each task holds and how splits are kept apart: docs/world.md.
Pure Python (standard library and PyYAML): it runs on any machine in seconds.
"""

from ckptlab.synthetic.generate import GENERATOR_VERSION, WORLD_FORMAT_VERSION, World, generate
from ckptlab.synthetic.io import write_world
from ckptlab.synthetic.sizes import SIZES
from ckptlab.synthetic.tasks import TASKS

__all__ = ["GENERATOR_VERSION", "SIZES", "TASKS", "WORLD_FORMAT_VERSION", "World", "generate", "write_world"]
