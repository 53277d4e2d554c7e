"""Build the optional C parts; everything else is in pyproject.toml.

* agent_supervise._spawn starts agents with vfork instead of fork (see its source).
* agent_supervise/_nsinit is the PID 1 of an agent's own PID namespace (see its
  source): a small executable, built with the same compiler, beside the extension.

Both are optional: without a C compiler the install still succeeds, spawning falls
back to subprocess with a preexec function (slower, same behaviour) and agents get
no namespaces of their own (``agent-supervise doctor`` says so).
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildWithInit(build_ext):
    def run(self):
        super().run()
        try:
            self._build_init()
        except Exception as err:  # noqa: BLE001 - optional, like the extension
            print(
                f"warning: agent_supervise/_nsinit not built ({err}): agents will "
                "run without namespaces of their own"
            )

    def _build_init(self):
        from setuptools._distutils.ccompiler import new_compiler
        from setuptools._distutils.sysconfig import customize_compiler

        cc = new_compiler()
        customize_compiler(cc)
        # Beside the extension: build/lib... for a wheel, supervisor/ when in place.
        dest = os.path.dirname(self.get_ext_fullpath("agent_supervise._spawn"))
        os.makedirs(dest, exist_ok=True)
        objects = cc.compile(
            ["supervisor/_nsinit.c"], output_dir=self.build_temp, extra_postargs=["-O2", "-Wall"]
        )
        target = os.path.join(dest, "_nsinit")
        cc.link_executable(objects, "_nsinit", output_dir=dest)
        os.chmod(target, 0o755)


setup(
    ext_modules=[
        Extension(
            "agent_supervise._spawn",
            ["supervisor/_spawn.c"],
            optional=True,
            extra_compile_args=["-Wall"],
        )
    ],
    cmdclass={"build_ext": BuildWithInit},
)
