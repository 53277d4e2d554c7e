"""Build the optional C extension; everything else is in pyproject.toml.

agent_supervise._spawn starts agents with vfork instead of fork (see its source).
``optional=True``: without a C compiler the install still succeeds and spawning
falls back to subprocess with a preexec function (slower, same behaviour).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("agent_supervise._spawn", ["supervisor/_spawn.c"],
                             optional=True, extra_compile_args=["-Wall"])])
